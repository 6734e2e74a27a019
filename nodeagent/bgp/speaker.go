package bgp

import (
	"context"
	"net/netip"

	"github.com/weftnet/weft/bpf/spec"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// Speaker is a BGP speaker as the agent drives it. *gobgp.Speaker
// implements it in-process (weft-bgp runs it behind proc.Serve), and
// *proc.Client implements it over a weft-bgp child (the agent's).
type Speaker interface {
	Apply(ctx context.Context, cfg Config, advertise []netip.Prefix, nexthops []netip.Addr) error
	Routes() []spec.Route
	Changed() <-chan struct{}
	Sessions() []*weftv1.BGPSession
	Stop(ctx context.Context, withdraw bool) error
}
