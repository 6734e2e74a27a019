// Package cni is the code of weft-cni, the CNI plugin binary
// (cmd/weft-cni is only its main). The container runtime starts a new
// weft-cni process for every ADD, DEL, CHECK, GC and STATUS; it is not
// part of the agent, which never imports this package
// (internal/importrules checks that): the two share only the agent's
// subnet file (flannel's format) and the node bridge weft0.
//
// The plugin attaches a pod's network namespace to the bridge with an
// address from the node's pod CIDR read from the subnet file, and keeps
// the address leases in an on-disk store guarded by flock, because each
// call is a new process. It touches the kernel (netlink, sysctl) only for
// the pod's veth, its addresses and routes, and the bridge; the eBPF
// datapath never touches the bridge, and this package never touches the
// datapath.
package cni
