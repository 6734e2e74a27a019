// Package tc attaches the datapath's programs to devices: tcx links pinned
// under the pin directory where the kernel has tcx (6.6+), else a clsact
// qdisc with direct-action cls_bpf filters.
package tc

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/bpf/internal/netns"
)

// Hook is one program attachment: a direction on a device, named by its
// pin.
type Hook struct {
	// Name is the pin name (under the pin directory) and the log name.
	Name    string
	tcx     ebpf.AttachType
	tcxLink uint32 // sys.AttachType in the tcx link info
	// Parent is the cls_bpf parent for the tc fallback.
	Parent uint32
}

// The hooks of the overlay device and the pod bridge.
var (
	Egress  = Hook{"link_egress", ebpf.AttachTCXEgress, uint32(ebpf.AttachTCXEgress), netlink.HANDLE_MIN_EGRESS}
	Ingress = Hook{"link_ingress", ebpf.AttachTCXIngress, uint32(ebpf.AttachTCXIngress), netlink.HANDLE_MIN_INGRESS}
	// Bridge is the transmit fast path on ingress of the pod bridge.
	Bridge = Hook{"link_bridge", ebpf.AttachTCXIngress, uint32(ebpf.AttachTCXIngress), netlink.HANDLE_MIN_INGRESS}
)

// Underlay is the underlay check on ingress of the underlay interface.
var Underlay = Hook{"link_underlay", ebpf.AttachTCXIngress, uint32(ebpf.AttachTCXIngress), netlink.HANDLE_MIN_INGRESS}

// PodPinPrefix starts the pin name of every pod port's hook.
const PodPinPrefix = "link_pod_"

// Pod is the pod check (and transmit fast path) on ingress of a pod's
// host-side veth, attached by weft-cni.
func Pod(ifindex int) Hook {
	return Hook{fmt.Sprintf("%s%d", PodPinPrefix, ifindex), ebpf.AttachTCXIngress, uint32(ebpf.AttachTCXIngress), netlink.HANDLE_MIN_INGRESS}
}

// LegacyPortPinPrefix starts the pin names of the transmit fast path the
// agent attached to learned pod ports before weft-cni attached the pod
// check; Open detaches them.
const LegacyPortPinPrefix = "link_port_"

// Legacy is the hook of a legacy port pin.
func Legacy(ifindex int) Hook {
	return Hook{fmt.Sprintf("%s%d", LegacyPortPinPrefix, ifindex), ebpf.AttachTCXIngress, uint32(ebpf.AttachTCXIngress), netlink.HANDLE_MIN_INGRESS}
}

// PinnedIndexes lists the ifindexes of the hooks pinned in pinDir under
// prefix (PodPinPrefix, LegacyPortPinPrefix).
func PinnedIndexes(pinDir, prefix string) ([]int, error) {
	ents, err := os.ReadDir(pinDir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("read pin dir: %w", err)
	}
	var out []int
	for _, e := range ents {
		n, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok {
			continue
		}
		if i, err := strconv.Atoi(n); err == nil && i > 0 {
			out = append(out, i)
		}
	}
	return out, nil
}

// UpdateTCX switches the live tcx link pinned for h to prog (atomically,
// as AttachTCX does). A link whose device is gone, or no pin, is left
// alone: false.
func UpdateTCX(pinDir string, h Hook, prog *ebpf.Program) (bool, error) {
	l, err := link.LoadPinnedLink(filepath.Join(pinDir, h.Name), nil)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, nil
		}
		return false, fmt.Errorf("load pinned link %s: %w", h.Name, err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return false, fmt.Errorf("read link info %s: %w", h.Name, err)
	}
	if t := info.TCX(); t == nil || t.Ifindex == 0 {
		return false, nil
	}
	if err := l.Update(prog); err != nil {
		return false, fmt.Errorf("update %s program: %w", h.Name, err)
	}
	return true, nil
}

// TCXSupported probes for tcx by querying the loopback device (ifindex 1
// in every namespace).
func TCXSupported() bool {
	_, err := link.QueryPrograms(link.QueryOptions{Target: 1, Attach: ebpf.AttachTCXIngress})
	return err == nil
}

// Attachment is a program for a hook.
type Attachment struct {
	Hook Hook
	Prog *ebpf.Program
}

// AttachTCX attaches each program to ifindex (in ns) at its hook through
// the link pinned at pinDir/<hook name>. An existing link on the same
// device gets its program replaced atomically (no gap, no second
// program); a link left over from a deleted device is unpinned first. New
// links are made in one pass on a thread in ns (the kernel resolves the
// ifindex in the calling thread's namespace).
func AttachTCX(ns *netns.NS, pinDir string, ifindex int, as ...Attachment) error {
	var fresh []Attachment
	for _, a := range as {
		path := filepath.Join(pinDir, a.Hook.Name)
		if l, err := link.LoadPinnedLink(path, nil); err == nil {
			ok, err := linkOn(l, ifindex, a.Hook, nil)
			if err == nil && ok {
				err = l.Update(a.Prog)
				l.Close()
				if err != nil {
					return fmt.Errorf("update %s program: %w", a.Hook.Name, err)
				}
				continue
			}
			_ = l.Unpin()
			l.Close()
		} else if !errors.Is(err, os.ErrNotExist) {
			_ = os.Remove(path)
		}
		fresh = append(fresh, a)
	}
	if len(fresh) == 0 {
		return nil
	}
	links := make([]link.Link, 0, len(fresh))
	defer func() {
		for _, l := range links {
			l.Close() // pinned links stay attached
		}
	}()
	err := ns.Do(func() error {
		for _, a := range fresh {
			l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: a.Prog, Attach: a.Hook.tcx})
			if err != nil {
				return fmt.Errorf("attach %s with tcx: %w", a.Hook.Name, err)
			}
			links = append(links, l)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for i, l := range links {
		path := filepath.Join(pinDir, fresh[i].Hook.Name)
		if err := l.Pin(path); err != nil {
			return fmt.Errorf("pin link to %s: %w", path, err)
		}
	}
	return nil
}

// TCXAttached reports whether the link pinned for h is a live tcx link on
// ifindex (running prog, when prog is non-nil).
func TCXAttached(pinDir string, ifindex int, h Hook, prog *ebpf.Program) (bool, error) {
	l, err := link.LoadPinnedLink(filepath.Join(pinDir, h.Name), nil)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, nil
		}
		return false, fmt.Errorf("load pinned link %s: %w", h.Name, err)
	}
	defer l.Close()
	return linkOn(l, ifindex, h, prog)
}

// DetachTCX detaches and removes the link pinned for h.
func DetachTCX(pinDir string, h Hook) error {
	path := filepath.Join(pinDir, h.Name)
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

// linkOn reports whether l is a live tcx link on ifindex at h (running
// prog, when prog is non-nil).
func linkOn(l link.Link, ifindex int, h Hook, prog *ebpf.Program) (bool, error) {
	info, err := l.Info()
	if err != nil {
		return false, fmt.Errorf("read link info: %w", err)
	}
	t := info.TCX()
	if t == nil || int(t.Ifindex) != ifindex || uint32(t.AttachType) != h.tcxLink {
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

const (
	filterHandle   = 1
	filterPriority = 1
	// FilterPrefix starts the name of every filter weft attaches.
	FilterPrefix = "weft_"
)

// AttachTC attaches prog to ifindex at h as a direct-action cls_bpf filter
// under a clsact qdisc. Replacing the filter with the same handle and
// priority swaps the program in place, so attaching twice keeps one
// filter.
func AttachTC(nl *netlink.Handle, ifindex int, h Hook, prog *ebpf.Program) error {
	q := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := nl.QdiscReplace(q); err != nil {
		return fmt.Errorf("add clsact qdisc: %w", err)
	}
	f := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex, Parent: h.Parent, Handle: filterHandle,
			Priority: filterPriority, Protocol: unix.ETH_P_ALL,
		},
		Fd: prog.FD(), Name: FilterPrefix + strings.TrimPrefix(h.Name, "link_"), DirectAction: true,
	}
	if err := nl.FilterReplace(f); err != nil {
		return fmt.Errorf("attach %s with tc: %w", h.Name, err)
	}
	return nil
}

// DetachTC removes weft's filter at h from ifindex (the clsact qdisc
// stays: others may use it). No such filter, or no device: nothing to do.
func DetachTC(nl *netlink.Handle, ifindex int, h Hook) error {
	fs, err := filters(nl, ifindex, h)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return err
	}
	for _, f := range fs {
		bf, ok := f.(*netlink.BpfFilter)
		if !ok || bf.Name != FilterPrefix+strings.TrimPrefix(h.Name, "link_") {
			continue
		}
		if err := nl.FilterDel(bf); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("detach %s filter: %w", h.Name, err)
		}
	}
	return nil
}

// TCAttached reports whether prog runs as a filter on ifindex at h.
func TCAttached(nl *netlink.Handle, ifindex int, h Hook, prog *ebpf.Program) (bool, error) {
	fs, err := filters(nl, ifindex, h)
	if err != nil || fs == nil {
		return false, err
	}
	id, err := progID(prog)
	if err != nil {
		return false, err
	}
	for _, f := range fs {
		if bf, ok := f.(*netlink.BpfFilter); ok && ebpf.ProgramID(bf.Id) == id {
			return true, nil
		}
	}
	return false, nil
}

// AnyTCAttached reports whether some weft filter (of any version) runs on
// ifindex at h.
func AnyTCAttached(nl *netlink.Handle, ifindex int, h Hook) (bool, error) {
	fs, err := filters(nl, ifindex, h)
	if err != nil {
		return false, err
	}
	for _, f := range fs {
		if bf, ok := f.(*netlink.BpfFilter); ok && strings.HasPrefix(bf.Name, FilterPrefix) {
			return true, nil
		}
	}
	return false, nil
}

// filters lists the filters of ifindex at h; nil without a clsact qdisc.
func filters(nl *netlink.Handle, ifindex int, h Hook) ([]netlink.Filter, error) {
	l, err := nl.LinkByIndex(ifindex)
	if err != nil {
		return nil, fmt.Errorf("read link #%d: %w", ifindex, err)
	}
	fs, err := nl.FilterList(l, h.Parent)
	if err != nil {
		return nil, nil // no clsact qdisc
	}
	return fs, nil
}
