// Package podguard is the pod check as weft-cni drives it. At ADD the
// plugin records what it assigned to the pod (MAC, IPv4, IPv6) for the
// host side of the pod's veth and links the program the weft agent pinned
// to that veth's ingress, before the veth is up: from its first frame the
// pod can send only with its own addresses (docs/datapath.md, "Trust"). At
// DEL it removes both.
//
// The agent's pins are the authority, not the kernel's neighbour table,
// which the pod itself could poison. The state lives in bpffs under the
// agent's pin directory, so it survives agent restarts, and the agent
// switches every pod's link to its new program when it is upgraded.
package podguard

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/weftnet/weft/bpf/internal/netns"
	"github.com/weftnet/weft/bpf/internal/object"
	"github.com/weftnet/weft/bpf/internal/pods"
	"github.com/weftnet/weft/bpf/internal/tc"
)

// ErrNotLoaded means the pin directory holds no pod check: the agent has
// not opened its datapath there (yet).
var ErrNotLoaded = errors.New("podguard: the weft agent has not loaded the pod check")

// ErrNoTCX means the kernel cannot link the check to a veth (tcx needs
// Linux 6.6).
var ErrNoTCX = errors.New("podguard: the kernel has no tcx (Linux 6.6+)")

// Pod is what weft-cni assigned to a pod: the MAC of its interface and its
// addresses (either may be the zero Addr). Its link-local IPv6 address is
// the EUI-64 one of MAC.
type Pod struct {
	MAC  net.HardwareAddr
	IPv4 netip.Addr
	IPv6 netip.Addr
}

// Guard is the pod check of one node. Not safe for concurrent use.
type Guard struct {
	ns     *netns.NS
	pinDir string
	pods   *ebpf.Map
	prog   *ebpf.Program
}

// Open opens the pod check the agent pinned in pinDir, for ports in the
// network namespace at netnsPath ("" means the caller's: weft-cni runs in
// the node's). It fails with ErrNotLoaded when the pins are missing,
// ErrNoTCX on a kernel without tcx, and an error naming the mismatch when
// the pinned pod map has another layout than this binary's.
func Open(netnsPath, pinDir string) (*Guard, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, object.WeftMapWeftPods), nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("open pod map in %s: %w", pinDir, ErrNotLoaded)
	}
	if err != nil {
		return nil, fmt.Errorf("open pod map in %s: %w", pinDir, err)
	}
	if m.KeySize() != 4 || int(m.ValueSize()) != binary.Size(object.WeftPodValue{}) {
		m.Close()
		return nil, fmt.Errorf("open pod map in %s: key/value %d/%d bytes, this binary has 4/%d (agent and weft-cni of different versions)",
			pinDir, m.KeySize(), m.ValueSize(), binary.Size(object.WeftPodValue{}))
	}
	prog, err := ebpf.LoadPinnedProgram(filepath.Join(pinDir, pods.ProgPin), nil)
	if err != nil {
		m.Close()
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("open pod program in %s: %w", pinDir, ErrNotLoaded)
		}
		return nil, fmt.Errorf("open pod program in %s: %w", pinDir, err)
	}
	ns, err := netns.Open(netnsPath)
	if err != nil {
		m.Close()
		prog.Close()
		return nil, err
	}
	g := &Guard{ns: ns, pinDir: pinDir, pods: m, prog: prog}
	var supported bool
	if err := ns.Do(func() error { supported = tc.TCXSupported(); return nil }); err != nil || !supported {
		g.Close()
		return nil, ErrNoTCX
	}
	return g, nil
}

// Attach records p for the host-side veth hostIfindex and links the check
// to it. Call it before the veth is up; calling it again replaces both.
func (g *Guard) Attach(hostIfindex int, p Pod) error {
	v, err := object.PodValue(p.MAC, p.IPv4, p.IPv6)
	if err != nil {
		return fmt.Errorf("attach pod check: %w", err)
	}
	if err := pods.Attach(g.ns, g.pinDir, g.pods, g.prog, hostIfindex, v); err != nil {
		return fmt.Errorf("attach pod check: %w", err)
	}
	return nil
}

// Detach removes the check and the record of port hostIfindex.
func (g *Guard) Detach(hostIfindex int) error {
	return pods.Detach(g.pinDir, g.pods, hostIfindex)
}

// Sweep removes the checks and records of ports that no longer exist (a
// deleted pod's veth goes with its namespace) and returns their ifindexes.
func (g *Guard) Sweep() ([]int, error) {
	return pods.Sweep(g.ns.NL, g.pinDir, g.pods)
}

// Check reports whether port hostIfindex is recorded as p and has the
// check linked.
func (g *Guard) Check(hostIfindex int, p Pod) error {
	want, err := object.PodValue(p.MAC, p.IPv4, p.IPv6)
	if err != nil {
		return fmt.Errorf("check pod check: %w", err)
	}
	var have object.WeftPodValue
	if err := g.pods.Lookup(uint32(hostIfindex), &have); err != nil {
		return fmt.Errorf("check pod check: no record of port #%d: %w", hostIfindex, err)
	}
	if have != want {
		return fmt.Errorf("check pod check: port #%d recorded as %s, want %s", hostIfindex, describe(have), describe(want))
	}
	ok, err := tc.TCXAttached(g.pinDir, hostIfindex, tc.Pod(hostIfindex), nil)
	if err != nil {
		return fmt.Errorf("check pod check: %w", err)
	}
	if !ok {
		return fmt.Errorf("check pod check: not linked to port #%d", hostIfindex)
	}
	return nil
}

func describe(v object.WeftPodValue) string {
	s := net.HardwareAddr(v.Mac[:]).String()
	if v.Flags&object.PodIPv4 != 0 {
		s += " " + netip.AddrFrom4(v.Ipv4).String()
	}
	if v.Flags&object.PodIPv6 != 0 {
		s += " " + netip.AddrFrom16(v.Ipv6).String()
	}
	return s
}

// Close releases the file descriptors; the pins stay.
func (g *Guard) Close() error {
	return errors.Join(g.pods.Close(), g.prog.Close(), g.ns.Close())
}
