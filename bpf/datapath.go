// Package bpf is weft's datapath: the eBPF programs and maps, the
// flow-based overlay device, weft's routes and its nftables table. It is
// the only weft package that imports cilium/ebpf, netlink and nftables.
//
// A Datapath works in the network namespace of the thread that opened it
// (a node agent's process namespace); every method checks that it is
// called from that namespace.
package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/hashicorp/go-hclog"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/bpf/spec"
)

// DefaultPinDir is the default bpffs directory of a node's pins.
const DefaultPinDir = "/sys/fs/bpf/weft"

const bpffsRoot = "/sys/fs/bpf"

// Config configures a Datapath.
type Config struct {
	// PinDir is the bpffs directory for this node's pins (default
	// DefaultPinDir). bpffs is mounted at /sys/fs/bpf if missing.
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

// DefaultBridge is the agreed name of a node's pod bridge.
const DefaultBridge = "weft0"

// Datapath is one node's live datapath. Methods are safe for concurrent
// use.
type Datapath struct {
	cfg     Config
	log     hclog.Logger
	netns   uint64
	useTCX  bool
	mu      sync.Mutex
	objs    weftObjects
	applied *kstate         // what the last Sync wrote; nil means read the kernel
	batch   bool            // the tunnel map takes batch operations
	nl      *netlink.Handle // bound to the datapath's namespace
	nsh     netns.NsHandle
	eps     endpointState // what the endpoint map is learned for
	ports   map[int]bool  // pod veths this Datapath attached weft_from_port to

	watchStop func() // ends the endpoint watch (nil: none)
	watchOnce sync.Once

	capsMu sync.Mutex
	caps   []string // probed once by Capabilities
}

// Open loads the programs and creates or reopens the pinned maps under
// cfg.PinDir, keeping their entries. If the overlay device exists and
// programs are attached to it, the attachments are switched atomically to
// the programs just loaded, so an upgraded binary takes over without a
// gap.
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
	ino, err := netnsInode()
	if err != nil {
		return nil, err
	}
	d.netns = ino
	if err := ensureBPFFS(cfg.PinDir); err != nil {
		return nil, err
	}
	if err := d.openNetlink(); err != nil {
		return nil, err
	}
	switch cfg.Attach {
	case AttachTCX:
		d.useTCX = true
	case AttachTC:
	default:
		d.useTCX = tcxSupported()
	}
	if err := d.load(); err != nil {
		d.closeNetlink()
		return nil, err
	}
	// Take over live attachments with the freshly loaded programs.
	for _, name := range []string{spec.VXLANDevice, spec.GeneveDevice} {
		dev, err := readDevice(name)
		if err != nil || dev == nil {
			continue
		}
		if ok, _ := d.anyAttached(dev.Index); ok {
			if err := d.attach(dev.Index); err != nil {
				d.objs.Close()
				d.closeNetlink()
				return nil, err
			}
			d.log.Info("took over program attachments", "device", name, "attach", d.attachName())
		}
	}
	if d.useTCX {
		if br, err := readLinkIndex(cfg.Bridge); err == nil && br != 0 {
			if ok, _ := tcxAttached(cfg.PinDir, br, dirBridge, nil); ok {
				if err := attachTCX(cfg.PinDir, br, dirBridge, d.objs.WeftFromPods); err != nil {
					d.objs.Close()
					d.closeNetlink()
					return nil, err
				}
			}
		}
	}
	if d.useTCX {
		d.startWatch()
	}
	d.log.Debug("opened", "pin_dir", cfg.PinDir, "attach", d.attachName())
	return d, nil
}

func (d *Datapath) attachName() string {
	if d.useTCX {
		return "tcx"
	}
	return "tc"
}

func (d *Datapath) load() error {
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: d.cfg.PinDir}}
	err := loadWeftObjects(&d.objs, opts)
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		// A map layout changed between versions: start the map afresh (the
		// next Sync refills it) rather than refusing to start.
		d.log.Warn("pinned map incompatible with this version, recreating", "error", err)
		for _, m := range []string{weftMapWeftTunnels, weftMapWeftStats, weftMapWeftEndpoints} {
			_ = os.Remove(filepath.Join(d.cfg.PinDir, m))
		}
		err = loadWeftObjects(&d.objs, opts)
	}
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return fmt.Errorf("load programs: %+v", ve)
		}
		return fmt.Errorf("load programs: %w", err)
	}
	return nil
}

// checkNetns refuses calls from a thread in another network namespace.
func (d *Datapath) checkNetns() error {
	ino, err := netnsInode()
	if err != nil {
		return err
	}
	if ino != d.netns {
		return errors.New("datapath: called from another network namespace than Open")
	}
	return nil
}

func netnsInode() (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return 0, fmt.Errorf("stat netns: %w", err)
	}
	return st.Ino, nil
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

// Underlay reports the node's underlay interface, address, MTU and
// directly connected networks.
func (d *Datapath) Underlay() (spec.Underlay, error) {
	if err := d.checkNetns(); err != nil {
		return spec.Underlay{}, err
	}
	return readUnderlay(d.cfg.Underlay)
}

// Counters sums the per-CPU statistics.
func (d *Datapath) Counters() (spec.Counters, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var per []weftStats
	if err := d.objs.WeftStats.Lookup(uint32(0), &per); err != nil {
		return spec.Counters{}, fmt.Errorf("read statistics: %w", err)
	}
	var c spec.Counters
	for _, s := range per {
		c.TxPackets += s.TxPackets
		c.TxBytes += s.TxBytes
		c.RxPackets += s.RxPackets
		c.RxBytes += s.RxBytes
		c.DropNoTunnel += s.DropNoTunnel
		c.DropSpoofed += s.DropSpoofed
		c.DropOther += s.DropOther
		c.RxDirect += s.RxDirect
		c.TxDirect += s.TxDirect
	}
	return c, nil
}

// Close releases file descriptors only: the device, routes, nftables
// table, pinned maps and pinned links stay, so forwarding continues while
// the agent is away.
func (d *Datapath) Close() error {
	d.stopWatch()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closeNetlink()
	return d.objs.Close()
}

// Teardown removes everything weft made on this node: the overlay devices
// (and with them every attachment), weft's routes, the nftables table and
// the pin directory. net.ipv4.ip_forward is left on. The Datapath is
// closed afterwards.
func (d *Datapath) Teardown() error {
	d.stopWatch()
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.checkNetns(); err != nil {
		return err
	}
	var errs []error
	for _, name := range []string{spec.VXLANDevice, spec.GeneveDevice} {
		errs = append(errs, deleteDevice(name))
	}
	if routes, err := listRoutes(); err != nil {
		errs = append(errs, err)
	} else {
		for _, r := range routes {
			errs = append(errs, deleteRoute(r))
		}
	}
	if _, exists, err := readMasq(); err != nil {
		errs = append(errs, err)
	} else {
		errs = append(errs, writeMasq(nil, exists))
	}
	// The bridge is not ours: detach its program explicitly.
	for _, dir := range []direction{dirBridge, dirEgress, dirIngress} {
		errs = append(errs, detachTCX(d.cfg.PinDir, dir))
	}
	errs = append(errs, d.detachPorts(nil))
	errs = append(errs, d.objs.Close())
	d.closeNetlink()
	if err := os.RemoveAll(d.cfg.PinDir); err != nil {
		errs = append(errs, fmt.Errorf("remove pins %s: %w", d.cfg.PinDir, err))
	}
	d.applied = nil
	d.log.Info("torn down", "pin_dir", d.cfg.PinDir)
	return errors.Join(errs...)
}

func (d *Datapath) attach(ifindex int) error {
	progs := map[direction]*ebpf.Program{dirEgress: d.objs.WeftEgress, dirIngress: d.objs.WeftIngress}
	for _, dir := range []direction{dirEgress, dirIngress} {
		var err error
		if d.useTCX {
			err = attachTCX(d.cfg.PinDir, ifindex, dir, progs[dir])
		} else {
			err = attachTC(ifindex, dir, progs[dir])
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// attached reports whether both of this Datapath's programs run on ifindex.
func (d *Datapath) attached(ifindex int) (bool, error) {
	progs := map[direction]*ebpf.Program{dirEgress: d.objs.WeftEgress, dirIngress: d.objs.WeftIngress}
	for _, dir := range []direction{dirEgress, dirIngress} {
		var ok bool
		var err error
		if d.useTCX {
			ok, err = tcxAttached(d.cfg.PinDir, ifindex, dir, progs[dir])
		} else {
			ok, err = tcAttached(ifindex, dir, progs[dir])
		}
		if err != nil || !ok {
			return false, err
		}
	}
	return true, nil
}

// anyAttached reports whether some weft program (any version) is attached
// to ifindex by this node's pins or filters.
func (d *Datapath) anyAttached(ifindex int) (bool, error) {
	if d.useTCX {
		return tcxAttached(d.cfg.PinDir, ifindex, dirEgress, nil)
	}
	l, err := netlinkLinkByIndex(ifindex)
	if err != nil {
		return false, err
	}
	fs, err := netlinkFilterList(l, dirEgress.parent)
	if err != nil {
		return false, nil
	}
	for _, f := range fs {
		if strings.HasPrefix(filterName(f), "weft_") {
			return true, nil
		}
	}
	return false, nil
}
