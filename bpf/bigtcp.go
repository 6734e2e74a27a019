package bpf

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/bpf/gsosize"
	"github.com/weftnet/weft/bpf/internal/device"
	"github.com/weftnet/weft/bpf/spec"
)

// convergeBigTCP raises the GSO/GRO limits of the underlay and the pod
// bridge to want.BigTCP (docs/datapath.md, "BIG TCP"), unless have says
// they are there already: a Sync then reads no device, a Reconcile (which
// reads the kernel afresh) checks them again. The pods' veths
// are weft-cni's: it reads the sizes from the subnet file the agent writes
// after this Sync. Limits are only ever raised: a device whose limit is
// higher than the pods' packets costs nothing, and lowering the underlay
// under a running pod's packets would have the kernel segment them in
// software.
func (d *Datapath) convergeBigTCP(want *spec.Desired, have *kstate, rec *recorder) error {
	if want.BigTCP == (spec.BigTCP{}) || want.BigTCP == have.bigTCP {
		return nil
	}
	nl := d.ns.NL
	u, err := device.Underlay(nl, d.cfg.Underlay)
	if err != nil {
		return fmt.Errorf("big tcp: %w", err)
	}
	done := true
	for _, name := range []string{u.Interface, d.cfg.Bridge} {
		l, err := nl.LinkByName(name)
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) && name == d.cfg.Bridge {
			done = false // weft-cni raises it too, at every ADD
			continue
		}
		if err != nil {
			return fmt.Errorf("big tcp: find %s: %w", name, err)
		}
		changed, err := gsosize.Raise(nl, l, want.BigTCP)
		for _, c := range changed {
			rec.note(&rec.rep.Updated, c)
		}
		if err != nil {
			return fmt.Errorf("big tcp: %w", err)
		}
	}
	if done {
		have.bigTCP = want.BigTCP
	}
	return nil
}
