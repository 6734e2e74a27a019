// Command weft-cni is weft's CNI plugin. The container runtime runs it with
// CNI_COMMAND=ADD|DEL|CHECK|GC|STATUS|VERSION and the network config on
// stdin; see nodeagent/cni and docs/kubernetes.md.
package main

import "github.com/weftnet/weft/nodeagent/cni"

func main() {
	cni.Main("weft-cni: attaches pods to the weft pod network")
}
