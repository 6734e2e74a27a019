// Package importrules holds the repository's import rules as a test, so
// `go test ./...` (and with it CI) fails when a package breaks one:
//
//   - Only the kernel-facing parts import the kernel's networking
//     libraries (github.com/vishvananda/netlink and netns,
//     github.com/cilium/ebpf, github.com/google/nftables): bpf/... (the
//     datapath), nodeagent/cni/... (the CNI plugin, a binary of its own)
//     and testenv/... (test namespaces). Everything else reaches the
//     kernel through package bpf, so the agent's logic tests without
//     root.
//   - bpf/spec, the plain-data desired state the agent's model builds,
//     imports none of them either.
//   - nodeagent/cni is the weft-cni plugin binary's code: only its main
//     (cmd/weft-cni), the test helpers that run the plugin (testenv) and
//     the manifest tests (deploy) import it; the agent never does.
//   - weft-agent's binary does not link GoBGP (github.com/osrg/gobgp):
//     the BGP speaker is weft-bgp, a process of its own (docs/bgp.md,
//     "Two processes"), so the agent's memory does not carry it. Checked
//     on the binary's whole dependency graph (go list -deps).
//
// The rules on imports cover a package's tests as well.
package importrules
