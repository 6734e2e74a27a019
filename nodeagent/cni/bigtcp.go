package cni

import (
	"fmt"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/bpf/gsosize"
	"github.com/weftnet/weft/bpf/spec"
)

// raiseGSO gives the named links of the current network namespace the
// GSO/GRO sizes of BIG TCP the agent wrote into the subnet file
// (WEFT_GSO_IPV4_MAX_SIZE, WEFT_GSO_IPV6_MAX_SIZE), each capped by the
// link's own tso_max_size; without them it does nothing. The agent has
// raised the underlay to the same sizes before it wrote them, so the
// pod's packets are never larger than the underlay takes whole
// (docs/datapath.md, "BIG TCP").
func raiseGSO(sub Subnet, names ...string) error {
	want := spec.BigTCP{IPv4: sub.GSOIPv4MaxSize, IPv6: sub.GSOIPv6MaxSize}
	if want == (spec.BigTCP{}) {
		return nil
	}
	nl, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("big tcp: open netlink: %w", err)
	}
	defer nl.Close()
	for _, name := range names {
		// Read now: a bridge's tso_max_size follows its ports.
		l, err := nl.LinkByName(name)
		if err != nil {
			return fmt.Errorf("big tcp: find %s: %w", name, err)
		}
		if _, err := gsosize.Raise(nl, l, want); err != nil {
			return fmt.Errorf("big tcp: %w", err)
		}
	}
	return nil
}
