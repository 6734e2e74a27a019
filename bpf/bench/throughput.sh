#!/bin/sh
# Pod-to-pod TCP throughput (iperf3) and request/response latency across two
# node namespaces, measured side by side in one run for weft's eBPF VXLAN
# (with and without the bridge fast path, and with VXLAN encapsulated and
# decapsulated in the programs: weft-bpf), flannel-style kernel VXLAN,
# plain routing and weft's native mode (plain's routes with host routing in
# eBPF and weft's pod and underlay checks), and native mode and weft-bpf
# with BIG TCP on (weft-bpf-big: packets over 64 KiB encapsulated whole in
# the programs) beside plain routing with the same GSO/GRO limits set by
# hand (plain-big, the fair comparison for both). iperf3
# client and server are pinned to CPU 0, the request/response client and
# server (busy-polling) to CPUs 0 and 1, the same for every setup; 11
# rounds in rotation, ~270 s.
# Needs root, iperf3, taskset and 2 CPUs. Results: docs/bench/datapath.md.
set -eu
cd "$(dirname "$0")/../.."
echo "# $(date -u +%FT%TZ) $(uname -r) nproc=$(nproc) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
echo "# load: $(cut -d' ' -f1-3 /proc/loadavg)"
go test -count=1 -run '^$' -bench '^BenchmarkPodToPod$' -benchtime 1x -v ./bpf/ | grep -v '^=== RUN'
