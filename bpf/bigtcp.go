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
// bridge to want.BigTCP (docs/datapath.md, "BIG TCP"). The pods' veths
// are weft-cni's: it reads the sizes from the subnet file the agent writes
// after this Sync. Limits are only ever raised: a device whose limit is
// higher than the pods' packets costs nothing, and lowering the underlay
// under a running pod's packets would have the kernel segment them in
// software.
func (d *Datapath) convergeBigTCP(want *spec.Desired, rec *recorder) error {
	if want.BigTCP == (spec.BigTCP{}) {
		return nil
	}
	nl := d.ns.NL
	u, err := device.Underlay(nl, d.cfg.Underlay)
	if err != nil {
		return fmt.Errorf("big tcp: %w", err)
	}
	for _, name := range []string{u.Interface, d.cfg.Bridge} {
		l, err := nl.LinkByName(name)
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) && name == d.cfg.Bridge {
			continue // weft-cni raises it too, at every ADD
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
	return nil
}
