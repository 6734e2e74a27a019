// Package gobgp is weft's BGP speaker (GoBGP), run by cmd/weft-bgp: it advertises
// the node's pod CIDRs with the node's underlay IP as next hop, and reports
// the best routes it learns for other nodes' pod CIDRs as spec.Routes with
// Proto spec.ProtoBGP. It never touches the kernel routing table; the
// datapath installs what Routes returns.
//
// A Speaker is safe for concurrent use.
package gobgp

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/hashicorp/go-hclog"
	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/server"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/nodeagent/bgp"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// Speaker runs one GoBGP server. The zero value is not usable; call New.
type Speaker struct {
	log     hclog.Logger
	changed chan struct{}
	reasons *reasons

	mu     sync.Mutex
	srv    *server.BgpServer
	global globalKey
	cancel context.CancelFunc
	peers  map[netip.Addr]peerKey
	// bad holds peers GoBGP refused to add, with the error.
	bad map[netip.Addr]string
	adv map[netip.Prefix]advertised
	// own are the prefixes the import policy "weft-not-own" refuses from
	// peers (the ones advertised, as last set by syncOwn).
	own []netip.Prefix
}

type advertised struct {
	nexthop netip.Addr
	uuid    []byte
}

// connectRetry is how often (5-10 s, GoBGP adds jitter) an unreachable
// peer is retried; GoBGP's own default of 120 s is too slow to notice a
// router coming back.
const connectRetry = 5

// globalKey is the part of Config that needs a new server when it changes.
type globalKey struct {
	routerID, local netip.Addr
	asn             uint32
	port            int32
	gr              bool
	restart         uint32
}

// New returns a stopped speaker; the first Apply starts it. logger may be
// nil.
func New(logger hclog.Logger) *Speaker {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	s := &Speaker{
		log:     logger.Named("bgp"),
		changed: make(chan struct{}, 1),
	}
	s.reasons = newReasons(s.notify)
	return s
}

func keyOf(c *bgp.Config) globalKey {
	k := globalKey{routerID: c.RouterID, local: c.LocalAddress, asn: c.ASN, port: c.ListenPort, gr: c.GracefulRestart}
	if k.port == 0 {
		k.port = 179
	}
	if c.GracefulRestart {
		k.restart = cmp0(c.RestartTime, bgp.DefaultRestartTime)
	}
	return k
}

func cmp0(v, def uint32) uint32 {
	if v == 0 {
		return def
	}
	return v
}

// Apply makes the speaker match cfg and advertise exactly the prefixes in
// advertise, each with the next hop of its family from nexthops (one per
// family), withdrawing any others. It starts the
// server on first use and restarts it (sessions reset) when RouterID, ASN,
// ListenPort, LocalAddress or graceful-restart settings change; peers are
// added, removed or (when their settings change) re-created to match.
// Apply is idempotent: the same arguments again change nothing.
//
// Problems with a peer (unreachable, wrong ASN or password, garbage on the
// wire, or a peer GoBGP refuses) never fail Apply; they show in Sessions.
// Apply fails for an unusable cfg (bgp.ErrInvalidConfig), for IPv6 prefixes
// without an IPv6 next hop (and vice versa), and when the listening socket
// cannot be opened. IPv6 prefixes may be advertised over IPv4 sessions
// (and the reverse): the next hop travels in MP_REACH_NLRI.
func (s *Speaker) Apply(ctx context.Context, cfg bgp.Config, advertise []netip.Prefix, nexthops []netip.Addr) error {
	if err := cfg.Check(); err != nil {
		return err
	}
	for _, p := range advertise {
		if !p.IsValid() || !bgp.NextHopFor(p, nexthops).IsValid() {
			return fmt.Errorf("%w: prefix %v without a next hop of its family in %v", bgp.ErrInvalidConfig, p, nexthops)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.notify()

	if s.srv != nil && s.global != keyOf(&cfg) {
		s.log.Info("restarting speaker for changed global settings", "router_id", cfg.RouterID, "asn", cfg.ASN)
		if err := s.stopLocked(ctx, true); err != nil {
			return err
		}
	}
	if s.srv == nil {
		if err := s.startLocked(ctx, &cfg); err != nil {
			return err
		}
	}
	// Before the peers: no path for an own prefix may enter the RIB.
	if err := s.syncOwn(ctx, advertise); err != nil {
		return err
	}
	s.syncPeers(ctx, &cfg)
	return s.syncPaths(ctx, advertise, nexthops)
}

// Names of the import policy that refuses a node's own prefixes.
const (
	ownPolicy = "weft-not-own"
	ownSet4   = "weft-own-v4"
	ownSet6   = "weft-own-v6"
)

// syncOwn makes the import policy "weft-not-own" refuse exactly the
// prefixes this node advertises, from every peer. Without it an iBGP
// peer's path for one of them with a higher LOCAL_PREF wins GoBGP's best
// path selection over the local one (LOCAL_PREF is compared before local
// origin), and the export policy, which passes only local paths, then
// withdraws the node's own CIDR from every peer. Paths already received
// are re-evaluated (soft reset in) when the prefixes change.
func (s *Speaker) syncOwn(ctx context.Context, advertise []netip.Prefix) error {
	own := make([]netip.Prefix, 0, len(advertise))
	for _, p := range advertise {
		own = append(own, p.Masked())
	}
	slices.SortFunc(own, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	own = slices.Compact(own)
	if s.own != nil && slices.Equal(own, s.own) {
		return nil
	}
	// A set never empty (GoBGP cannot tell an empty set's family): a
	// host route to the unspecified address, which nothing announces.
	sets := map[string][]*api.Prefix{
		ownSet4: {{IpPrefix: "0.0.0.0/32", MaskLengthMin: 32, MaskLengthMax: 32}},
		ownSet6: {{IpPrefix: "::/128", MaskLengthMin: 128, MaskLengthMax: 128}},
	}
	for _, p := range own {
		name := ownSet4
		if p.Addr().Is6() {
			name = ownSet6
		}
		sets[name] = append(sets[name], &api.Prefix{IpPrefix: p.String(), MaskLengthMin: uint32(p.Bits()), MaskLengthMax: uint32(p.Bits())})
	}
	for _, name := range []string{ownSet4, ownSet6} {
		ds := &api.DefinedSet{DefinedType: api.DefinedType_PREFIX, Name: name, Prefixes: sets[name]}
		if err := s.srv.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: ds, Replace: true}); err != nil {
			return fmt.Errorf("set import policy's prefix set %s: %w", name, err)
		}
	}
	if s.own == nil {
		// The global import policy sees local paths too (AddPath): only
		// paths from peers, internal and external, are refused.
		reject := &api.Actions{RouteAction: api.RouteAction_REJECT}
		pol := &api.Policy{Name: ownPolicy}
		for _, set := range []string{ownSet4, ownSet6} {
			for _, rt := range []api.Conditions_RouteType{api.Conditions_ROUTE_TYPE_INTERNAL, api.Conditions_ROUTE_TYPE_EXTERNAL} {
				pol.Statements = append(pol.Statements, &api.Statement{Name: fmt.Sprintf("%s-%s-%d", ownPolicy, set, rt),
					Conditions: &api.Conditions{PrefixSet: &api.MatchSet{Type: api.MatchSet_ANY, Name: set}, RouteType: rt}, Actions: reject})
			}
		}
		if err := s.srv.AddPolicy(ctx, &api.AddPolicyRequest{Policy: pol}); err != nil {
			return fmt.Errorf("add import policy: %w", err)
		}
		err := s.srv.AddPolicyAssignment(ctx, &api.AddPolicyAssignmentRequest{Assignment: &api.PolicyAssignment{
			Name: "global", Direction: api.PolicyDirection_IMPORT, Policies: []*api.Policy{{Name: ownPolicy}}, DefaultAction: api.RouteAction_ACCEPT,
		}})
		if err != nil {
			return fmt.Errorf("assign import policy: %w", err)
		}
	} else if len(s.peers) > 0 {
		if err := s.srv.ResetPeer(ctx, &api.ResetPeerRequest{Soft: true, Direction: api.ResetPeerRequest_IN}); err != nil {
			s.log.Warn("re-evaluate received paths for the new own prefixes", "error", err)
		}
	}
	s.own = own
	return nil
}

func (s *Speaker) startLocked(ctx context.Context, cfg *bgp.Config) error {
	srv := server.NewBgpServer(server.LoggerOption(&logAdapter{log: s.log, reasons: s.reasons}))
	go srv.Serve()
	g := &api.Global{
		Asn:        cfg.ASN,
		RouterId:   cfg.RouterID.String(),
		ListenPort: cfg.ListenPort,
	}
	if g.ListenPort == 0 {
		g.ListenPort = 179
	}
	if cfg.LocalAddress.IsValid() {
		g.ListenAddresses = []string{cfg.LocalAddress.String()}
	}
	if err := srv.StartBgp(ctx, &api.StartBgpRequest{Global: g}); err != nil {
		srv.Stop()
		return fmt.Errorf("start bgp on port %d: %w", g.ListenPort, err)
	}
	if err := exportOnlyLocal(ctx, srv); err != nil {
		srv.Stop()
		return err
	}
	wctx, cancel := context.WithCancel(context.Background())
	err := srv.WatchEvent(wctx, &api.WatchEventRequest{
		Peer:  &api.WatchEventRequest_Peer{},
		Table: &api.WatchEventRequest_Table{Filters: []*api.WatchEventRequest_Table_Filter{{Type: api.WatchEventRequest_Table_Filter_BEST}}},
	}, func(*api.WatchEventResponse) { s.notify() })
	if err != nil {
		cancel()
		srv.Stop()
		return fmt.Errorf("watch bgp events: %w", err)
	}
	s.srv, s.cancel, s.global = srv, cancel, keyOf(cfg)
	s.peers = map[netip.Addr]peerKey{}
	s.bad = map[netip.Addr]string{}
	s.adv = map[netip.Prefix]advertised{}
	s.log.Info("speaker started", "router_id", cfg.RouterID, "asn", cfg.ASN, "port", g.ListenPort)
	return nil
}

func (s *Speaker) syncPeers(ctx context.Context, cfg *bgp.Config) {
	want := map[netip.Addr]peerKey{}
	for _, p := range cfg.Peers {
		if !p.Address.IsValid() || p.Address == cfg.RouterID || p.Address == cfg.LocalAddress {
			continue
		}
		want[p.Address] = peerKeyOf(cfg, &p)
	}
	for addr, have := range s.peers {
		if w, ok := want[addr]; ok && w == have {
			continue
		}
		if err := s.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: addr.String()}); err != nil {
			s.log.Warn("delete peer failed", "peer", addr, "error", err)
		}
		delete(s.peers, addr)
		s.reasons.forget(addr.String())
		s.log.Info("peer removed", "peer", addr)
	}
	for addr := range s.bad {
		delete(s.bad, addr)
	}
	for addr, w := range want {
		if _, ok := s.peers[addr]; ok {
			continue
		}
		s.passwords(w.password)
		if err := s.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: w.apiPeer()}); err != nil {
			s.bad[addr] = fmt.Sprintf("add peer: %v", err)
			s.log.Warn("peer refused", "peer", addr, "error", err)
			continue
		}
		s.peers[addr] = w
		s.log.Info("peer added", "peer", addr, "asn", w.asn, "md5", w.password != "", "multihop_ttl", w.ttl)
	}
}

// passwords tells the log adapter which strings to scrub.
func (s *Speaker) passwords(pw string) {
	if pw != "" {
		s.reasons.secret(pw)
	}
}

func (s *Speaker) syncPaths(ctx context.Context, advertise []netip.Prefix, nexthops []netip.Addr) error {
	want := map[netip.Prefix]bool{}
	for _, p := range advertise {
		want[p.Masked()] = true
	}
	var errs []error
	for p, a := range s.adv {
		if want[p] && a.nexthop == bgp.NextHopFor(p, nexthops) {
			continue
		}
		if err := s.srv.DeletePath(ctx, &api.DeletePathRequest{Family: family(p), Uuid: a.uuid}); err != nil {
			errs = append(errs, fmt.Errorf("withdraw %v: %w", p, err))
			continue
		}
		delete(s.adv, p)
		s.log.Info("withdrawn", "prefix", p)
	}
	for p := range want {
		if _, ok := s.adv[p]; ok {
			continue
		}
		nexthop := bgp.NextHopFor(p, nexthops)
		resp, err := s.srv.AddPath(ctx, &api.AddPathRequest{Path: newPath(p, nexthop)})
		if err != nil {
			errs = append(errs, fmt.Errorf("advertise %v: %w", p, err))
			continue
		}
		s.adv[p] = advertised{nexthop: nexthop, uuid: resp.Uuid}
		s.log.Info("advertised", "prefix", p, "nexthop", nexthop)
	}
	return errors.Join(errs...)
}

func family(p netip.Prefix) *api.Family {
	if p.Addr().Is4() {
		return &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	}
	return &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}
}

func newPath(p netip.Prefix, nexthop netip.Addr) *api.Path {
	nlri, _ := anypb.New(&api.IPAddressPrefix{Prefix: p.Addr().String(), PrefixLen: uint32(p.Bits())})
	origin, _ := anypb.New(&api.OriginAttribute{Origin: 0}) // IGP
	var nh *anypb.Any
	if p.Addr().Is4() {
		nh, _ = anypb.New(&api.NextHopAttribute{NextHop: nexthop.String()})
	} else {
		nh, _ = anypb.New(&api.MpReachNLRIAttribute{Family: family(p), NextHops: []string{nexthop.String()}, Nlris: []*anypb.Any{nlri}})
	}
	return &api.Path{Family: family(p), Nlri: nlri, Pattrs: []*anypb.Any{origin, nh}}
}

// Routes returns every learned path of every prefix some peer advertises,
// excluding this speaker's own prefixes and paths whose next hop is this
// node, sorted by prefix, GoBGP's best path of a prefix first. Not only
// the best: the agent refuses routes the log does not allow, and an
// honest path must stay when a rogue peer's wins GoBGP's selection (an
// eBGP path beats an iBGP one). Paths a restarting peer left behind
// (graceful restart, marked stale in GoBGP) are included until they expire.
// It returns nil when the speaker is stopped.
func (s *Speaker) Routes() []spec.Route {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv == nil {
		return nil
	}
	var out []spec.Route
	for _, f := range []*api.Family{family(netip.MustParsePrefix("0.0.0.0/0")), family(netip.MustParsePrefix("::/0"))} {
		err := s.srv.ListPath(context.Background(), &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: f}, func(d *api.Destination) {
			// The best path first, then the others in GoBGP's order; two
			// peers' paths with one next hop are one route.
			start := len(out)
			for _, best := range []bool{true, false} {
				for _, p := range d.Paths {
					if p.Best != best || p.IsWithdraw {
						continue
					}
					if r, ok := s.learned(p); ok && !slices.Contains(out[start:], r) {
						out = append(out, r)
					}
				}
			}
		})
		if err != nil {
			s.log.Warn("list paths failed", "error", err)
		}
	}
	slices.SortStableFunc(out, func(a, b spec.Route) int {
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c
		}
		return a.Prefix.Bits() - b.Prefix.Bits()
	})
	return out
}

func (s *Speaker) learned(p *api.Path) (spec.Route, bool) {
	if _, err := netip.ParseAddr(p.NeighborIp); err != nil {
		return spec.Route{}, false // local path (NeighborIp "<nil>")
	}
	var pfx api.IPAddressPrefix
	if p.Nlri == nil || p.Nlri.UnmarshalTo(&pfx) != nil {
		return spec.Route{}, false
	}
	addr, err := netip.ParseAddr(pfx.Prefix)
	if err != nil {
		return spec.Route{}, false
	}
	prefix := netip.PrefixFrom(addr, int(pfx.PrefixLen)).Masked()
	if _, own := s.adv[prefix]; own {
		return spec.Route{}, false
	}
	via := nextHop(p)
	if !via.IsValid() || via == s.global.routerID || via == s.global.local {
		return spec.Route{}, false
	}
	return spec.Route{Prefix: prefix, Via: via, Proto: spec.ProtoBGP}, true
}

func nextHop(p *api.Path) netip.Addr {
	for _, a := range p.Pattrs {
		var nh api.NextHopAttribute
		if a.UnmarshalTo(&nh) == nil {
			addr, _ := netip.ParseAddr(nh.NextHop)
			return addr
		}
		var mp api.MpReachNLRIAttribute
		if a.UnmarshalTo(&mp) == nil && len(mp.NextHops) > 0 {
			// With a link-local second next hop GoBGP lists the global one first.
			addr, _ := netip.ParseAddr(mp.NextHops[0])
			return addr
		}
	}
	return netip.Addr{}
}

// Changed is signalled (capacity 1, never closed) when Routes or Sessions
// may have changed: a best path changed, a session changed state, a
// session's down reason changed, or Apply/Stop ran.
func (s *Speaker) Changed() <-chan struct{} { return s.changed }

func (s *Speaker) notify() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// Sessions returns one entry per configured peer, sorted by address: state
// is GoBGP's session state ("established", "active", "connect", "idle",
// "opensent", "openconfirm"), reason is empty while established and
// otherwise the last error seen for that peer (a connect error, the
// NOTIFICATION sent or received, hold timer expiry, a malformed message).
// advertised counts this speaker's prefixes of the families negotiated with
// an established peer (only its own are ever exported); received counts
// the prefixes the peer sent, over all families.
func (s *Speaker) Sessions() []*weftv1.BGPSession {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv == nil {
		return nil
	}
	var out []*weftv1.BGPSession
	err := s.srv.ListPeer(context.Background(), &api.ListPeerRequest{EnableAdvertised: true}, func(p *api.Peer) {
		addr := p.GetConf().GetNeighborAddress()
		st := p.GetState().GetSessionState()
		sess := &weftv1.BGPSession{Peer: addr, State: stateName(st)}
		for _, af := range p.AfiSafis {
			sess.Received += uint32(af.GetState().GetReceived())
			// GoBGP's own advertised counter ignores the export policy, so
			// count this speaker's prefixes of each negotiated family.
			if st == api.PeerState_ESTABLISHED && af.GetState().GetEnabled() {
				v4 := af.GetState().GetFamily().GetAfi() == api.Family_AFI_IP
				for p := range s.adv {
					if p.Addr().Is4() == v4 {
						sess.Advertised++
					}
				}
			}
		}
		if st != api.PeerState_ESTABLISHED {
			sess.Reason = s.reasons.get(addr)
			if p.GetState().GetAdminState() == api.PeerState_DOWN && sess.Reason == "" {
				sess.Reason = "administratively down"
			}
		}
		out = append(out, sess)
	})
	if err != nil {
		s.log.Warn("list peers failed", "error", err)
	}
	for addr, why := range s.bad {
		out = append(out, &weftv1.BGPSession{Peer: addr.String(), State: "invalid", Reason: why})
	}
	slices.SortFunc(out, func(a, b *weftv1.BGPSession) int {
		x, _ := netip.ParseAddr(a.Peer)
		y, _ := netip.ParseAddr(b.Peer)
		return x.Compare(y)
	})
	return out
}

func stateName(st api.PeerState_SessionState) string {
	switch st {
	case api.PeerState_IDLE:
		return "idle"
	case api.PeerState_CONNECT:
		return "connect"
	case api.PeerState_ACTIVE:
		return "active"
	case api.PeerState_OPENSENT:
		return "opensent"
	case api.PeerState_OPENCONFIRM:
		return "openconfirm"
	case api.PeerState_ESTABLISHED:
		return "established"
	}
	return "unknown"
}

// Stop ends every session and the server. With withdraw, the speaker first
// withdraws its prefixes and closes sessions with a Cease NOTIFICATION, so
// peers drop this node's routes at once (node leaving, or leaving bgp
// mode). Without withdraw, the TCP connections are shut down without any
// BGP message, as if the agent had crashed: peers that negotiated graceful
// restart keep this node's routes (stale) for the restart time until the
// next agent re-advertises them; peers without it drop them. A stopped
// speaker can be started again by Apply. Stop on a stopped speaker is a
// no-op.
func (s *Speaker) Stop(ctx context.Context, withdraw bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.notify()
	return s.stopLocked(ctx, withdraw)
}

func (s *Speaker) stopLocked(ctx context.Context, withdraw bool) error {
	if s.srv == nil {
		return nil
	}
	var errs []error
	if withdraw {
		if err := s.syncPaths(ctx, nil, nil); err != nil {
			errs = append(errs, err)
		}
	} else {
		peers := make([]netip.Addr, 0, len(s.peers))
		for a := range s.peers {
			peers = append(peers, a)
		}
		n, err := shutdownSessions(peers, s.global.port)
		if err != nil {
			errs = append(errs, fmt.Errorf("shut down sessions: %w", err))
		}
		s.log.Info("sessions dropped without notification for graceful restart", "sockets", n)
	}
	// StopBgp deletes every peer (a Cease NOTIFICATION, which cannot be
	// written on a socket shut down above) and closes the listeners.
	s.srv.Stop()
	s.cancel()
	s.srv, s.cancel = nil, nil
	s.peers, s.bad, s.adv, s.own = nil, nil, nil, nil
	s.reasons.reset()
	s.log.Info("speaker stopped", "withdraw", withdraw)
	return errors.Join(errs...)
}

// exportOnlyLocal installs the global export policy "weft-own-only": a
// node advertises its own prefixes and never re-advertises what it learned,
// so with two routers (or a router and a full mesh) a node is never a
// transit path.
func exportOnlyLocal(ctx context.Context, srv *server.BgpServer) error {
	reject := &api.Actions{RouteAction: api.RouteAction_REJECT}
	pol := &api.Policy{Name: "weft-own-only", Statements: []*api.Statement{
		{Name: "weft-no-internal", Conditions: &api.Conditions{RouteType: api.Conditions_ROUTE_TYPE_INTERNAL}, Actions: reject},
		{Name: "weft-no-external", Conditions: &api.Conditions{RouteType: api.Conditions_ROUTE_TYPE_EXTERNAL}, Actions: reject},
	}}
	if err := srv.AddPolicy(ctx, &api.AddPolicyRequest{Policy: pol}); err != nil {
		return fmt.Errorf("add export policy: %w", err)
	}
	err := srv.AddPolicyAssignment(ctx, &api.AddPolicyAssignmentRequest{Assignment: &api.PolicyAssignment{
		Name: "global", Direction: api.PolicyDirection_EXPORT, Policies: []*api.Policy{{Name: pol.Name}}, DefaultAction: api.RouteAction_ACCEPT,
	}})
	if err != nil {
		return fmt.Errorf("assign export policy: %w", err)
	}
	return nil
}
