// Package bpf is weft's datapath: it turns a spec.Desired into kernel
// objects on one node (the eBPF programs and maps, the flow-based overlay
// device, weft's routes and its nftables table) and reads back what the
// kernel holds. With its internal packages it is the only part of weft
// that talks to the kernel's networking; see docs/datapath.md.
//
// A Datapath is bound to one network namespace, chosen when it is opened:
// its methods act there whichever goroutine or OS thread calls them.
package bpf

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/bpf/internal/device"
	"github.com/weftnet/weft/bpf/internal/netns"
	"github.com/weftnet/weft/bpf/internal/nft"
	"github.com/weftnet/weft/bpf/internal/object"
	"github.com/weftnet/weft/bpf/internal/pods"
	"github.com/weftnet/weft/bpf/internal/route"
	"github.com/weftnet/weft/bpf/internal/tc"
	"github.com/weftnet/weft/bpf/spec"
)

// DefaultPinDir is the default bpffs directory of a node's pins.
const DefaultPinDir = "/sys/fs/bpf/weft"

const bpffsRoot = "/sys/fs/bpf"

// DefaultBridge is the agreed name of a node's pod bridge.
const DefaultBridge = "weft0"

// Route protocol numbers that mark weft's routes, so Sync, mode switches and
// Teardown touch only those. Neither number is assigned in iproute2's
// rt_protos; 186 (RTPROT_BGP) is avoided on purpose because other BGP
// daemons on the node (FRR, bird) use it.
const (
	// RouteProtocol marks cluster-CIDR routes to the overlay device and
	// direct routes to adjacent nodes.
	RouteProtocol = route.Protocol
	// RouteProtocolBGP marks routes learned by weft's BGP speaker.
	RouteProtocolBGP = route.ProtocolBGP
)

// NFTable is the nftables table (family inet) weft owns for masquerade.
const NFTable = nft.Table

// ErrNoGeneve is returned (wrapped) when the kernel cannot create a Geneve
// device.
var ErrNoGeneve = device.ErrNoGeneve

// errClosed is returned by calls after Close or Teardown.
var errClosed = errors.New("datapath: closed")

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

// Config configures a Datapath.
type Config struct {
	// NetNS is the network namespace to work in, as a path
	// (/run/netns/NAME, /proc/PID/ns/net); "" means the namespace of the
	// thread that calls Open (the agent's own).
	NetNS string
	// PinDir is the bpffs directory for this node's pins (default
	// DefaultPinDir). bpffs is mounted at /sys/fs/bpf if missing. bpffs
	// is not per network namespace: nodes sharing a machine need their
	// own directories.
	PinDir string
	// Underlay is the underlay interface name or IP; "" means the
	// interface of the default route.
	Underlay string
	// Logger defaults to a null logger.
	Logger hclog.Logger
	// Attach forces an attachment method (tests use AttachTC to exercise
	// the fallback); the default picks tcx where the kernel has it.
	Attach AttachMode
	// Bridge is the pod bridge (default DefaultBridge). In overlay modes,
	// with tcx, a program on its ingress sends pod traffic for remote pods
	// straight to the overlay device (see docs/datapath.md).
	Bridge string
	// NoBridgeFastPath leaves pod traffic to the node's routing (the
	// benchmarks compare both paths).
	NoBridgeFastPath bool
}

// Datapath is one node's live datapath. Methods are safe for concurrent
// use from any goroutine.
type Datapath struct {
	cfg    Config
	log    hclog.Logger
	useTCX bool
	mu     sync.Mutex // serialises converging and map writes
	// nsMu guards ns's lifetime: Close and Teardown hold it (and mu) to
	// close it; calls that only read the kernel (Underlay, VTEPMAC,
	// Capabilities) hold it shared, so they need not wait for a Sync.
	nsMu      sync.RWMutex
	ns        *netns.NS // nil once closed
	objs      *object.WeftObjects
	applied   *kstate       // what the last Sync wrote; nil means read the kernel
	batch     bool          // the tunnel map takes batch operations
	eps       endpointState // what the endpoint map is derived for
	unguarded map[int]bool  // pod ports without the pod check, warned about

	watchStop func() // ends the endpoint watch (nil: none)
	watchOnce sync.Once

	capsMu sync.Mutex
	caps   []string // probed once by Capabilities
}

// Open binds a Datapath to cfg.NetNS, loads the programs and creates or
// reopens the pinned maps under cfg.PinDir, keeping their entries (a map
// whose layout changed between versions starts empty, see object.Load).
// If the overlay device exists and programs are attached to it, the
// attachments are switched atomically to the programs just loaded, so an
// upgraded binary takes over without a gap.
func Open(cfg Config) (*Datapath, error) {
	if cfg.PinDir == "" {
		cfg.PinDir = DefaultPinDir
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Bridge == "" {
		cfg.Bridge = DefaultBridge
	}
	d := &Datapath{cfg: cfg, log: cfg.Logger.Named("datapath"), batch: true}
	if err := ensureBPFFS(cfg.PinDir); err != nil {
		return nil, err
	}
	ns, err := netns.Open(cfg.NetNS)
	if err != nil {
		return nil, err
	}
	switch cfg.Attach {
	case AttachTCX:
		d.useTCX = true
	case AttachTC:
	default:
		d.useTCX = tc.TCXSupported()
	}
	objs, replaced, err := object.Load(cfg.PinDir)
	if err != nil {
		ns.Close()
		return nil, err
	}
	for _, m := range replaced {
		// A map layout changed between versions: the map starts afresh
		// (the next Sync refills it) rather than refusing to start.
		d.log.Warn("pinned map incompatible with this version, recreated", "map", m)
	}
	d.ns, d.objs = ns, objs
	// weft-cni links this program to every new pod's veth.
	if err := pods.PinProgram(cfg.PinDir, objs.WeftFromPort); err != nil {
		d.objs.Close()
		d.ns.Close()
		return nil, err
	}
	if err := d.takeOver(); err != nil {
		d.objs.Close()
		d.ns.Close()
		return nil, err
	}
	if d.useTCX {
		d.startWatch()
	}
	d.log.Debug("opened", "netns", ns.Path(), "pin_dir", cfg.PinDir, "attach", d.attachName())
	return d, nil
}

// takeOver switches live attachments to the programs just loaded: the
// overlay device's, the underlay check's, the bridge's and every pod
// port's. Ports of the transmit fast path an older agent attached itself
// (before weft-cni attached the pod check) are detached.
func (d *Datapath) takeOver() error {
	nl := d.ns.NL
	ports, err := tc.PinnedIndexes(d.cfg.PinDir, tc.PodPinPrefix)
	if err != nil {
		return err
	}
	for _, p := range ports {
		if _, err := tc.UpdateTCX(d.cfg.PinDir, tc.Pod(p), d.objs.WeftFromPort); err != nil {
			return err
		}
	}
	legacy, err := tc.PinnedIndexes(d.cfg.PinDir, tc.LegacyPortPinPrefix)
	if err != nil {
		return err
	}
	for _, p := range legacy {
		if err := tc.DetachTCX(d.cfg.PinDir, tc.Legacy(p)); err != nil {
			return err
		}
	}
	if len(ports)+len(legacy) > 0 {
		d.log.Info("took over pod ports", "ports", len(ports), "legacy_detached", len(legacy))
	}
	if under, err := d.underlayIndex(); err == nil && under != 0 {
		if ok, _ := d.underlayAttached(under, nil); ok {
			if err := d.attachUnderlay(under); err != nil {
				return err
			}
		}
	}
	for _, name := range []string{spec.VXLANDevice, spec.GeneveDevice} {
		dev, err := device.Read(nl, name)
		if err != nil || dev == nil {
			continue
		}
		if ok, _ := d.anyAttached(dev.Index); ok {
			if err := d.attach(dev.Index); err != nil {
				return err
			}
			d.log.Info("took over program attachments", "device", name, "attach", d.attachName())
		}
	}
	if !d.useTCX {
		return nil
	}
	br, err := device.Index(nl, d.cfg.Bridge)
	if err != nil || br == 0 {
		return nil
	}
	if ok, _ := tc.TCXAttached(d.cfg.PinDir, br, tc.Bridge, nil); ok {
		return tc.AttachTCX(d.ns, d.cfg.PinDir, br, tc.Attachment{Hook: tc.Bridge, Prog: d.objs.WeftFromPods})
	}
	return nil
}

func (d *Datapath) attachName() string {
	if d.useTCX {
		return "tcx"
	}
	return "tc"
}

// ensureBPFFS mounts bpffs at /sys/fs/bpf if needed and creates dir,
// which must be on a bpffs.
func ensureBPFFS(dir string) error {
	var fs unix.Statfs_t
	if err := unix.Statfs(bpffsRoot, &fs); err != nil || fs.Type != unix.BPF_FS_MAGIC {
		if err := os.MkdirAll(bpffsRoot, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", bpffsRoot, err)
		}
		if err := unix.Mount("bpffs", bpffsRoot, "bpf", 0, ""); err != nil {
			return fmt.Errorf("mount bpffs at %s: %w", bpffsRoot, err)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create pin dir %s: %w", dir, err)
	}
	if err := unix.Statfs(dir, &fs); err != nil {
		return fmt.Errorf("stat pin dir %s: %w", dir, err)
	}
	if fs.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("check pin dir %s: not on a bpf filesystem", dir)
	}
	return nil
}

// PinDir is the bpffs directory of this node's pins; weft-cni finds the
// pod check there (package podguard).
func (d *Datapath) PinDir() string { return d.cfg.PinDir }

// Underlay reports the node's underlay interface, address, MTU and
// directly connected networks.
func (d *Datapath) Underlay() (spec.Underlay, error) {
	d.nsMu.RLock()
	defer d.nsMu.RUnlock()
	if d.ns == nil {
		return spec.Underlay{}, errClosed
	}
	return device.Underlay(d.ns.NL, d.cfg.Underlay)
}

// Close releases file descriptors only: the device, routes, nftables
// table, pinned maps and pinned links stay, so forwarding continues while
// the agent is away.
func (d *Datapath) Close() error {
	d.stopWatch()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.nsMu.Lock()
	defer d.nsMu.Unlock()
	if d.ns == nil {
		return nil
	}
	err := errors.Join(d.objs.Close(), d.ns.Close())
	d.ns = nil
	return err
}

// Teardown removes everything weft made on this node: the overlay devices
// (and with them every attachment), the underlay check, the pod checks
// weft-cni linked (pods keep running, unchecked), weft's routes, the
// nftables table and the pin directory. net.ipv4.ip_forward is left on. The Datapath is
// closed afterwards.
func (d *Datapath) Teardown() error {
	d.stopWatch()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.nsMu.Lock()
	defer d.nsMu.Unlock()
	if d.ns == nil {
		return errClosed
	}
	nl := d.ns.NL
	var errs []error
	for _, name := range []string{spec.VXLANDevice, spec.GeneveDevice} {
		errs = append(errs, device.Delete(nl, name))
	}
	if routes, err := route.List(nl); err != nil {
		errs = append(errs, err)
	} else {
		for _, r := range routes {
			errs = append(errs, route.Delete(nl, r))
		}
	}
	if _, exists, err := d.readMasq(); err != nil {
		errs = append(errs, err)
	} else {
		errs = append(errs, d.writeMasq(nil, exists))
	}
	// The bridge, the underlay and the pod ports are not ours: detach
	// their programs explicitly.
	for _, h := range []tc.Hook{tc.Bridge, tc.Egress, tc.Ingress, tc.Underlay} {
		errs = append(errs, tc.DetachTCX(d.cfg.PinDir, h))
	}
	if under, err := d.underlayIndex(); err == nil && under != 0 {
		if !d.useTCX {
			errs = append(errs, tc.DetachTC(nl, under, tc.Underlay))
		}
		managed, _, err := route.Neighbours(nl, under)
		errs = append(errs, err)
		for h := range managed {
			errs = append(errs, route.DeleteNeigh(nl, under, h))
		}
	}
	for _, pre := range []string{tc.PodPinPrefix, tc.LegacyPortPinPrefix} {
		ps, err := tc.PinnedIndexes(d.cfg.PinDir, pre)
		errs = append(errs, err)
		for _, p := range ps {
			h := tc.Pod(p)
			if pre == tc.LegacyPortPinPrefix {
				h = tc.Legacy(p)
			}
			errs = append(errs, tc.DetachTCX(d.cfg.PinDir, h))
		}
	}
	errs = append(errs, d.objs.Close(), d.ns.Close())
	d.ns = nil
	if err := os.RemoveAll(d.cfg.PinDir); err != nil {
		errs = append(errs, fmt.Errorf("remove pins %s: %w", d.cfg.PinDir, err))
	}
	d.applied = nil
	d.log.Info("torn down", "pin_dir", d.cfg.PinDir)
	return errors.Join(errs...)
}

// attach attaches both overlay programs to ifindex.
func (d *Datapath) attach(ifindex int) error {
	if d.useTCX {
		return tc.AttachTCX(d.ns, d.cfg.PinDir, ifindex,
			tc.Attachment{Hook: tc.Egress, Prog: d.objs.WeftEgress}, tc.Attachment{Hook: tc.Ingress, Prog: d.objs.WeftIngress})
	}
	for _, h := range []tc.Hook{tc.Egress, tc.Ingress} {
		if err := tc.AttachTC(d.ns.NL, ifindex, h, d.overlayProg(h)); err != nil {
			return err
		}
	}
	return nil
}

// attached reports whether both of this Datapath's overlay programs run on
// ifindex.
func (d *Datapath) attached(ifindex int) (bool, error) {
	for _, h := range []tc.Hook{tc.Egress, tc.Ingress} {
		var ok bool
		var err error
		if d.useTCX {
			ok, err = tc.TCXAttached(d.cfg.PinDir, ifindex, h, d.overlayProg(h))
		} else {
			ok, err = tc.TCAttached(d.ns.NL, ifindex, h, d.overlayProg(h))
		}
		if err != nil || !ok {
			return false, err
		}
	}
	return true, nil
}

func (d *Datapath) overlayProg(h tc.Hook) *ebpf.Program {
	if h == tc.Egress {
		return d.objs.WeftEgress
	}
	return d.objs.WeftIngress
}

// underlayIndex is the ifindex of the underlay interface (0: none found).
func (d *Datapath) underlayIndex() (int, error) {
	u, err := device.Underlay(d.ns.NL, d.cfg.Underlay)
	if err != nil {
		return 0, err
	}
	return device.Index(d.ns.NL, u.Interface)
}

// attachUnderlay attaches the underlay check to ifindex.
func (d *Datapath) attachUnderlay(ifindex int) error {
	if d.useTCX {
		return tc.AttachTCX(d.ns, d.cfg.PinDir, ifindex, tc.Attachment{Hook: tc.Underlay, Prog: d.objs.WeftFromUnderlay})
	}
	return tc.AttachTC(d.ns.NL, ifindex, tc.Underlay, d.objs.WeftFromUnderlay)
}

// detachUnderlay detaches the underlay check from ifindex.
func (d *Datapath) detachUnderlay(ifindex int) error {
	if d.useTCX {
		return tc.DetachTCX(d.cfg.PinDir, tc.Underlay)
	}
	return tc.DetachTC(d.ns.NL, ifindex, tc.Underlay)
}

// underlayAttached reports whether the underlay check (prog; nil: any
// version) runs on ifindex.
func (d *Datapath) underlayAttached(ifindex int, prog *ebpf.Program) (bool, error) {
	if d.useTCX {
		return tc.TCXAttached(d.cfg.PinDir, ifindex, tc.Underlay, prog)
	}
	if prog == nil {
		return tc.AnyTCAttached(d.ns.NL, ifindex, tc.Underlay)
	}
	return tc.TCAttached(d.ns.NL, ifindex, tc.Underlay, prog)
}

// anyAttached reports whether some weft program (any version) is attached
// to ifindex by this node's pins or filters.
func (d *Datapath) anyAttached(ifindex int) (bool, error) {
	if d.useTCX {
		return tc.TCXAttached(d.cfg.PinDir, ifindex, tc.Egress, nil)
	}
	return tc.AnyTCAttached(d.ns.NL, ifindex, tc.Egress)
}

// readMasq and writeMasq run nft's operations on a connection to the
// datapath's namespace.
func (d *Datapath) readMasq() ([]string, bool, error) {
	c, err := d.ns.NFT()
	if err != nil {
		return nil, false, err
	}
	return nft.Read(c)
}

func (d *Datapath) writeMasq(rules []nft.Rule, exists bool) error {
	c, err := d.ns.NFT()
	if err != nil {
		return err
	}
	return nft.Write(c, rules, exists)
}
