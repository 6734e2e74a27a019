// Package pods is the pod check's state on a node: the pods weft-cni
// attached (the weft_pods map, keyed by the ifindex of the pod's host-side
// veth), the program weft-cni links to those veths (the datapath pins it
// as ProgPin) and the links themselves (pinned as link_pod_<ifindex>).
// Both weft-cni (through package podguard) and the datapath use it.
package pods

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/bpf/internal/netns"
	"github.com/weftnet/weft/bpf/internal/object"
	"github.com/weftnet/weft/bpf/internal/tc"
)

// ProgPin is the pin name of the program linked to pod veths.
const ProgPin = "prog_from_port"

// PinProgram pins prog as pinDir/ProgPin, replacing the pin of an older
// program in one rename, so weft-cni always finds one.
func PinProgram(pinDir string, prog *ebpf.Program) error {
	// A clone: a Program remembers its first pin path and would not pin
	// again.
	c, err := prog.Clone()
	if err != nil {
		return fmt.Errorf("pin pod program: %w", err)
	}
	defer c.Close()
	tmp := filepath.Join(pinDir, ProgPin+"_new") // bpffs refuses names with a dot
	_ = os.Remove(tmp)
	if err := c.Pin(tmp); err != nil {
		return fmt.Errorf("pin pod program: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(pinDir, ProgPin)); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("pin pod program: %w", err)
	}
	return nil
}

// Attach records pod v for the veth ifindex (in ns) and links prog to its
// ingress with tcx, pinned as tc.Pod(ifindex). The entry comes first: the
// program drops what it cannot attribute.
func Attach(ns *netns.NS, pinDir string, m *ebpf.Map, prog *ebpf.Program, ifindex int, v object.WeftPodValue) error {
	if err := m.Update(uint32(ifindex), &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("record pod of port #%d: %w", ifindex, err)
	}
	if err := tc.AttachTCX(ns, pinDir, ifindex, tc.Attachment{Hook: tc.Pod(ifindex), Prog: prog}); err != nil {
		return err
	}
	return nil
}

// Detach detaches the pod check from port ifindex and forgets its entry.
func Detach(pinDir string, m *ebpf.Map, ifindex int) error {
	err := tc.DetachTCX(pinDir, tc.Pod(ifindex))
	if derr := m.Delete(uint32(ifindex)); derr != nil && !errors.Is(derr, ebpf.ErrKeyNotExist) {
		err = errors.Join(err, fmt.Errorf("forget pod of port #%d: %w", ifindex, derr))
	}
	return err
}

// Entries reads the whole pod map.
func Entries(m *ebpf.Map) (map[int]object.WeftPodValue, error) {
	out := map[int]object.WeftPodValue{}
	var k uint32
	var v object.WeftPodValue
	it := m.Iterate()
	for it.Next(&k, &v) {
		out[int(k)] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read pod map: %w", err)
	}
	return out, nil
}

// Sweep detaches and forgets every port (pinned link or map entry) whose
// device no longer exists in nl's namespace, and returns their ifindexes.
// Each is checked just before it goes, so a port weft-cni attaches
// meanwhile (its veth exists before its entry) is never taken for gone.
func Sweep(nl *netlink.Handle, pinDir string, m *ebpf.Map) ([]int, error) {
	ents, err := Entries(m)
	if err != nil {
		return nil, err
	}
	pinned, err := tc.PinnedIndexes(pinDir, tc.PodPinPrefix)
	if err != nil {
		return nil, err
	}
	seen := map[int]bool{}
	for i := range ents {
		seen[i] = true
	}
	for _, i := range pinned {
		seen[i] = true
	}
	var gone []int
	var errs []error
	for i := range seen {
		_, err := nl.LinkByIndex(i)
		var nf netlink.LinkNotFoundError
		if err == nil || !errors.As(err, &nf) {
			continue
		}
		if err := Detach(pinDir, m, i); err != nil {
			errs = append(errs, err)
			continue
		}
		gone = append(gone, i)
	}
	return gone, errors.Join(errs...)
}
