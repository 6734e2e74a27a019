#!/bin/sh
# The unpinned multi-stream variant of throughput.sh: iperf3 with 1 and 4
# parallel streams (and 4 writing 64 KiB at a time) and 4 iperf3 pairs of
# one stream each (4 sending threads), client and server left to the scheduler, for weft
# native with host routing in eBPF (without and with BIG TCP), plain
# routing (without and with the same GSO/GRO limits), weft VXLAN (device,
# and weft-bpf: VXLAN in the programs, both sides, without and with BIG
# TCP: weft-bpf-big) and kernel VXLAN in rotation; 7 rounds, ~570 s. Needs root and iperf3. Results:
# docs/BENCHMARKS.md.
set -eu
cd "$(dirname "$0")/../.."
echo "# $(date -u +%FT%TZ) $(uname -r) nproc=$(nproc) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
echo "# load: $(cut -d' ' -f1-3 /proc/loadavg)"
go test -count=1 -run '^$' -bench '^BenchmarkPodToPodStreams$' -benchtime 1x -v ./bpf/ | grep -v '^=== RUN'
