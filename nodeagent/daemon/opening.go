package daemon

import (
	"cmp"
	"context"
	"net"
	"net/netip"

	"github.com/weftnet/weft/bpf"
	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/nodeagent"
)

// openingDatapath is the node's datapath while bpf.Open loads the programs
// in the background: the agent starts following the log at once (reading
// thousands of nodes is the longest step of a cold start) and registers
// meanwhile. What the registration needs (the underlay, the capabilities,
// the overlay device's MAC) is read through a bpf.Host until the open is
// done, so the registration does not wait for the verifier; every other
// method waits for the open, then calls the datapath, or returns the
// open's error.
type openingDatapath struct {
	// host is set before hostDone closes; nil when it could not open:
	// then the node reads wait for the open too.
	host     *bpf.Host
	hostDone chan struct{}
	done     chan struct{}
	dp       *bpf.Datapath
	err      error
	pin      string // cfg.PinDir, known before the open
}

// nodeReader is what bpf.Host and bpf.Datapath both read of the node.
type nodeReader interface {
	Underlay() (spec.Underlay, error)
	Capabilities() []string
	VTEPMAC() (net.HardwareAddr, error)
}

var (
	_ nodeReader = (*bpf.Host)(nil)
	_ nodeReader = (*bpf.Datapath)(nil)
)

var (
	_ nodeagent.Datapath   = (*openingDatapath)(nil)
	_ nodeagent.NodeInfo   = (*openingDatapath)(nil)
	_ nodeagent.PodGateway = (*openingDatapath)(nil)
	_ nodeagent.PinDirer   = (*openingDatapath)(nil)
)

// openDatapath starts opening the node's bpf.Host and bpf.Open(cfg), each
// on its own goroutine, and returns at once: the agent's list of the log
// starts without waiting for either (the Host's netlink handle is a few
// ms). Close it when done.
func openDatapath(cfg bpf.Config) *openingDatapath {
	o := &openingDatapath{hostDone: make(chan struct{}), done: make(chan struct{}), pin: cmp.Or(cfg.PinDir, bpf.DefaultPinDir)}
	go func() {
		defer close(o.hostDone)
		if h, err := bpf.OpenHost(cfg); err == nil {
			o.host = h
		}
	}()
	go func() {
		defer close(o.done)
		o.dp, o.err = bpf.Open(cfg)
	}()
	return o
}

// wait returns the opened datapath or the open's error.
func (o *openingDatapath) wait() (*bpf.Datapath, error) {
	<-o.done
	return o.dp, o.err
}

// Close waits for the open and closes the datapath (file descriptors
// only, see bpf.Datapath.Close) and the Host.
func (o *openingDatapath) Close() {
	if dp, err := o.wait(); err == nil {
		dp.Close()
	}
	<-o.hostDone
	if o.host != nil {
		o.host.Close()
	}
}

// node is what answers the node reads: the datapath once it is open, the
// Host before (or the open's outcome, without a Host).
func (o *openingDatapath) node() (nodeReader, error) {
	<-o.hostDone
	select {
	case <-o.done:
	default:
		if o.host != nil {
			return o.host, nil
		}
	}
	return o.wait()
}

func (o *openingDatapath) Underlay() (spec.Underlay, error) {
	n, err := o.node()
	if err != nil {
		return spec.Underlay{}, err
	}
	return n.Underlay()
}

func (o *openingDatapath) Sync(ctx context.Context, want *spec.Desired) (spec.Report, error) {
	dp, err := o.wait()
	if err != nil {
		return spec.Report{}, err
	}
	return dp.Sync(ctx, want)
}

func (o *openingDatapath) Reconcile(ctx context.Context, want *spec.Desired) (spec.Report, error) {
	dp, err := o.wait()
	if err != nil {
		return spec.Report{}, err
	}
	return dp.Reconcile(ctx, want)
}

func (o *openingDatapath) Counters() (spec.Counters, error) {
	dp, err := o.wait()
	if err != nil {
		return spec.Counters{}, err
	}
	return dp.Counters()
}

func (o *openingDatapath) Capabilities() []string {
	n, err := o.node()
	if err != nil {
		return nil
	}
	return n.Capabilities()
}

func (o *openingDatapath) VTEPMAC() (net.HardwareAddr, error) {
	n, err := o.node()
	if err != nil {
		return nil, err
	}
	return n.VTEPMAC()
}

func (o *openingDatapath) EnsurePodGateway(podCIDRs []netip.Prefix, mtu int) error {
	dp, err := o.wait()
	if err != nil {
		return err
	}
	return dp.EnsurePodGateway(podCIDRs, mtu)
}

// PinDir is the datapath's pin directory (subnet.env names it for
// weft-cni); it is configuration, so it does not wait for the open.
func (o *openingDatapath) PinDir() string { return o.pin }
