package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// AttachMode selects how programs are attached to the overlay device.
type AttachMode int

const (
	// AttachAuto uses tcx where the kernel has it (6.6+), else tc.
	AttachAuto AttachMode = iota
	// AttachTCX forces tcx links (pinned under PinDir).
	AttachTCX
	// AttachTC forces a clsact qdisc with direct-action cls_bpf filters.
	AttachTC
)

func (m AttachMode) String() string {
	switch m {
	case AttachTCX:
		return "tcx"
	case AttachTC:
		return "tc"
	}
	return "auto"
}

// direction is one of the two program attachments.
type direction struct {
	name    string // pin name and log name
	tcx     ebpf.AttachType
	tcxLink uint32 // sys.AttachType of the tcx link info
	parent  uint32 // cls_bpf parent for the tc fallback
}

var (
	dirEgress  = direction{"link_egress", ebpf.AttachTCXEgress, uint32(ebpf.AttachTCXEgress), netlink.HANDLE_MIN_EGRESS}
	dirIngress = direction{"link_ingress", ebpf.AttachTCXIngress, uint32(ebpf.AttachTCXIngress), netlink.HANDLE_MIN_INGRESS}
	// dirBridge is the fast path on ingress of the pod bridge.
	dirBridge = direction{"link_bridge", ebpf.AttachTCXIngress, uint32(ebpf.AttachTCXIngress), netlink.HANDLE_MIN_INGRESS}
)

// detachTCX detaches and removes the link pinned at pinDir/d.name.
func detachTCX(pinDir string, d direction) error {
	path := filepath.Join(pinDir, d.name)
	l, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err == nil {
		// Detach now: dropping the pin alone detaches only after the
		// bpffs inode is freed, an RCU grace period later.
		_ = l.Detach()
		l.Close()
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("unpin %s: %w", path, err)
	}
	return nil
}

// tcxSupported probes for tcx by querying the loopback device.
func tcxSupported() bool {
	_, err := link.QueryPrograms(link.QueryOptions{Target: 1, Attach: ebpf.AttachTCXIngress})
	return err == nil
}

func progID(p *ebpf.Program) (ebpf.ProgramID, error) {
	info, err := p.Info()
	if err != nil {
		return 0, fmt.Errorf("read program info: %w", err)
	}
	id, ok := info.ID()
	if !ok {
		return 0, errors.New("read program info: no id")
	}
	return id, nil
}

// attachTCX attaches prog to ifindex in direction d through the link pinned
// at pinDir/d.name. An existing link on the same device gets its program
// replaced atomically (no gap, no second program); a link left over from a
// deleted device is unpinned first.
func attachTCX(pinDir string, ifindex int, d direction, prog *ebpf.Program) error {
	path := filepath.Join(pinDir, d.name)
	if l, err := link.LoadPinnedLink(path, nil); err == nil {
		ok, err := tcxLinkOn(l, ifindex, d, nil)
		if err == nil && ok {
			err = l.Update(prog)
			l.Close()
			if err != nil {
				return fmt.Errorf("update %s program: %w", d.name, err)
			}
			return nil
		}
		_ = l.Unpin()
		l.Close()
	} else if !errors.Is(err, os.ErrNotExist) {
		_ = os.Remove(path)
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: d.tcx})
	if err != nil {
		return fmt.Errorf("attach %s with tcx: %w", d.name, err)
	}
	defer l.Close()
	if err := l.Pin(path); err != nil {
		return fmt.Errorf("pin link to %s: %w", path, err)
	}
	return nil
}

// tcxLinkOn reports whether l is a live tcx link on ifindex in direction d
// (running prog, when prog is non-nil).
func tcxLinkOn(l link.Link, ifindex int, d direction, prog *ebpf.Program) (bool, error) {
	info, err := l.Info()
	if err != nil {
		return false, fmt.Errorf("read link info: %w", err)
	}
	t := info.TCX()
	if t == nil || int(t.Ifindex) != ifindex || uint32(t.AttachType) != d.tcxLink {
		return false, nil
	}
	if prog != nil {
		id, err := progID(prog)
		if err != nil {
			return false, err
		}
		if info.Program != id {
			return false, nil
		}
	}
	return true, nil
}

func tcxAttached(pinDir string, ifindex int, d direction, prog *ebpf.Program) (bool, error) {
	l, err := link.LoadPinnedLink(filepath.Join(pinDir, d.name), nil)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, nil
		}
		return false, fmt.Errorf("load pinned link %s: %w", d.name, err)
	}
	defer l.Close()
	return tcxLinkOn(l, ifindex, d, prog)
}

const tcHandle = 1
const tcPriority = 1

// attachTC attaches prog as a direct-action cls_bpf filter under a clsact
// qdisc. Replacing the filter with the same handle and priority swaps the
// program in place, so attaching twice keeps one filter.
func attachTC(ifindex int, d direction, prog *ebpf.Program) error {
	q := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscReplace(q); err != nil {
		return fmt.Errorf("add clsact qdisc: %w", err)
	}
	f := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex, Parent: d.parent, Handle: tcHandle,
			Priority: tcPriority, Protocol: unix.ETH_P_ALL,
		},
		Fd: prog.FD(), Name: "weft_" + d.name[len("link_"):], DirectAction: true,
	}
	if err := netlink.FilterReplace(f); err != nil {
		return fmt.Errorf("attach %s with tc: %w", d.name, err)
	}
	return nil
}

func tcAttached(ifindex int, d direction, prog *ebpf.Program) (bool, error) {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return false, fmt.Errorf("read link #%d: %w", ifindex, err)
	}
	fs, err := netlink.FilterList(l, d.parent)
	if err != nil {
		return false, nil // no clsact qdisc
	}
	id, err := progID(prog)
	if err != nil {
		return false, err
	}
	n := 0
	for _, f := range fs {
		if bf, ok := f.(*netlink.BpfFilter); ok && ebpf.ProgramID(bf.Id) == id {
			n++
		}
	}
	return n >= 1, nil
}

func netlinkLinkByIndex(i int) (netlink.Link, error) {
	l, err := netlink.LinkByIndex(i)
	if err != nil {
		return nil, fmt.Errorf("read link #%d: %w", i, err)
	}
	return l, nil
}

func netlinkFilterList(l netlink.Link, parent uint32) ([]netlink.Filter, error) {
	return netlink.FilterList(l, parent)
}

func filterName(f netlink.Filter) string {
	if bf, ok := f.(*netlink.BpfFilter); ok {
		return bf.Name
	}
	return ""
}
