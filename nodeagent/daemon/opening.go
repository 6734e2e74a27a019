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
// thousands of nodes is the longest step of a cold start) and every method
// waits for the open, then calls the datapath, or returns the open's
// error.
type openingDatapath struct {
	done chan struct{}
	dp   *bpf.Datapath
	err  error
	pin  string // cfg.PinDir, known before the open
}

var (
	_ nodeagent.Datapath   = (*openingDatapath)(nil)
	_ nodeagent.NodeInfo   = (*openingDatapath)(nil)
	_ nodeagent.PodGateway = (*openingDatapath)(nil)
	_ nodeagent.PinDirer   = (*openingDatapath)(nil)
)

// openDatapath starts bpf.Open(cfg) and returns at once.
func openDatapath(cfg bpf.Config) *openingDatapath {
	o := &openingDatapath{done: make(chan struct{}), pin: cmp.Or(cfg.PinDir, bpf.DefaultPinDir)}
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

func (o *openingDatapath) Underlay() (spec.Underlay, error) {
	dp, err := o.wait()
	if err != nil {
		return spec.Underlay{}, err
	}
	return dp.Underlay()
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
	dp, err := o.wait()
	if err != nil {
		return nil
	}
	return dp.Capabilities()
}

func (o *openingDatapath) VTEPMAC() (net.HardwareAddr, error) {
	dp, err := o.wait()
	if err != nil {
		return nil, err
	}
	return dp.VTEPMAC()
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
