package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/protobuf/proto"

	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/internal/backoff"
	"github.com/weftnet/weft/proto/keys"
	"github.com/weftnet/weft/proto/validate"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// Backoff of the lease keeper while etcd refuses a grant or a write.
const (
	leaseRetryMin, leaseRetryMax = 100 * time.Millisecond, 5 * time.Second
	// regRetry is how soon a changed registration that could not be
	// written is tried again on the same lease.
	regRetry = time.Second
)

func (a *Agent) requestTimeout() time.Duration {
	if a.cfg.Follow.RequestTimeout > 0 {
		return a.cfg.Follow.RequestTimeout
	}
	return 5 * time.Second
}

// registration is what /weft/registrations/<node> holds, from v.
func (a *Agent) registration(v *view) *weftv1.Registration {
	r := &weftv1.Registration{
		Name:         a.cfg.NodeName,
		UnderlayIp:   v.underlayIP.String(),
		VtepMac:      a.cfg.VTEPMAC,
		Capabilities: a.cfg.Capabilities,
		Asn:          a.cfg.ASN,
		// The same slice every time: the registration is only read.
		PreviousPodCidrs: a.previous,
	}
	if v.underlayIP6.IsValid() {
		r.UnderlayIpV6 = v.underlayIP6.String()
	}
	if r.VtepMac == "" {
		r.VtepMac = v.vtepMAC
	}
	if r.Capabilities == nil {
		r.Capabilities = slices.Clone(v.caps)
	}
	// Peers send BIG packets to this node in their programs only if it
	// says its programs take them (model.Desired, FlagBigDecap). Not
	// into an empty list: a node that reports no capabilities is not
	// judged by the controller, one that reports only this one would be.
	if a.followsTunnelDatapath() && len(r.Capabilities) > 0 && !slices.Contains(r.Capabilities, spec.CapBigDecap) {
		r.Capabilities = append(slices.Clone(r.Capabilities), spec.CapBigDecap)
	}
	return r
}

// followsTunnelDatapath reports whether this node's in-program VXLAN is
// the cluster config's to decide: no --tunnel-datapath=device and no
// --host-routing=stack turns it off whatever the config says. Such a
// node registers spec.CapBigDecap from its first registration on (no
// second write once it has synced, so a join stays one event): its
// programs take BIG packets out of the tunnel whenever the config has
// them decapsulate (tunnel_datapath "bpf", host_routing not "stack"),
// which is what peers check beside the capability.
func (a *Agent) followsTunnelDatapath() bool {
	return a.cfg.TunnelDatapath != validate.TunnelDatapathDevice && a.cfg.HostRouting != validate.HostRoutingStack
}

// keepLease keeps the registration and the status on one lease (a
// concurrency.Session) until ctx ends. A lost session (its keepalives
// went unanswered for a TTL while etcd was away, or the lease was
// revoked) is replaced: first by keeping the same lease alive again when
// etcd still holds it (etcd extends every lease when it comes back after
// an outage, so the registration never disappears), else by a new lease;
// the registration is written again either way. concurrency.Session
// alone ends there.
// On shutdown the session is orphaned, not closed: the lease is not
// revoked but runs out on its own, so a quick restart keeps the node's
// registration (and the controller never starts its removal grace).
func (a *Agent) keepLease(ctx context.Context) {
	// The registration carries the underlay IP, which the converge loop
	// reads first.
	for !a.view.Load().underlayIP.IsValid() {
		select {
		case <-ctx.Done():
			return
		case <-a.regKick:
		}
	}
	w := &statusWriter{a: a}
	defer w.stop()
	bo := backoff.New(leaseRetryMin, leaseRetryMax)
	var last clientv3.LeaseID
	// etcdBack is when the follower last reported etcd answering again
	// while the keeper was failing: the gap from there to the new
	// registration is logged (it must not be a backoff step).
	var etcdBack, failingSince time.Time
	for ctx.Err() == nil {
		s, reg, resumed, err := a.register(ctx, last)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if failingSince.IsZero() {
				failingSince = time.Now()
			}
			w.storeHealth(ctx, err)
			d := bo.Next()
			a.log.Warn("register", "error", err, "retry_in", d)
			select {
			case <-ctx.Done():
				return
			case <-time.After(d):
			case <-a.etcdUp:
				etcdBack = time.Now()
				bo.Reset()
			}
			continue
		}
		bo.Reset()
		select {
		case <-a.etcdUp: // news of etcd being back is old now
		default:
		}
		w.storeHealth(ctx, nil)
		last = s.Lease()
		args := []any{"lease", fmt.Sprintf("%x", int64(last)), "ttl", a.cfg.LeaseTTL, "resumed", resumed}
		if !failingSince.IsZero() {
			args = append(args, "failing_for", time.Since(failingSince).Round(time.Millisecond))
			if !etcdBack.IsZero() {
				gap := time.Since(etcdBack)
				args = append(args, "after_etcd_answered", gap.Round(time.Microsecond))
			}
		}
		etcdBack, failingSince = time.Time{}, time.Time{}
		a.log.Info("registered", args...)
		a.serve(ctx, s, w, reg)
		s.Orphan() // never revoke: see above
		if ctx.Err() != nil {
			return
		}
		failingSince = time.Now()
		a.log.Warn("lease session ended; registering again")
	}
}

// watchConn pokes the lease keeper (etcdUp) each time the client's
// connection to etcd becomes ready after it was not: the first moment
// etcd can answer again, which the follower may not see (its watch
// reconnects quietly). A registration waiting out a backoff then tries
// at once.
func (a *Agent) watchConn(ctx context.Context) {
	conn := a.cfg.Client.ActiveConnection()
	if conn == nil {
		return
	}
	state := conn.GetState()
	for conn.WaitForStateChange(ctx, state) {
		next := conn.GetState()
		if next == connectivity.Ready && state != connectivity.Ready {
			poke(a.etcdUp)
		}
		state = next
	}
}

// register keeps the lease last alive again when etcd still holds it
// (resumed), else grants a new one, keeps it alive in a session and puts
// the registration on it; it returns the registration written. On an
// error nothing is left running; a granted lease that never carried the
// registration just expires.
func (a *Agent) register(ctx context.Context, last clientv3.LeaseID) (s *concurrency.Session, reg *weftv1.Registration, resumed bool, err error) {
	rctx, cancel := context.WithTimeout(ctx, a.requestTimeout())
	defer cancel()
	id := clientv3.NoLease
	if last != clientv3.NoLease {
		switch _, err := a.cfg.Client.KeepAliveOnce(rctx, last); {
		case err == nil:
			id, resumed = last, true
		case !errors.Is(err, rpctypes.ErrLeaseNotFound):
			return nil, nil, false, fmt.Errorf("renew lease %x: %w", int64(last), err)
		}
	}
	if id == clientv3.NoLease {
		// Granting here, with a timeout, rather than in NewSession,
		// which would wait for etcd as long as ctx lives.
		g, err := a.cfg.Client.Grant(rctx, int64(a.cfg.LeaseTTL/time.Second))
		if err != nil {
			return nil, nil, false, fmt.Errorf("grant lease: %w", err)
		}
		id = g.ID
	}
	s, err = concurrency.NewSession(a.cfg.Client, concurrency.WithLease(id), concurrency.WithContext(ctx))
	if err != nil {
		return nil, nil, false, fmt.Errorf("keep lease alive: %w", err)
	}
	reg = a.registration(a.view.Load())
	if err := a.putRegistration(ctx, s.Lease(), reg); err != nil {
		s.Orphan()
		return nil, nil, false, err
	}
	return s, reg, resumed, nil
}

func (a *Agent) putRegistration(ctx context.Context, id clientv3.LeaseID, r *weftv1.Registration) error {
	rctx, cancel := context.WithTimeout(ctx, a.requestTimeout())
	defer cancel()
	if _, err := a.cfg.Client.Put(rctx, a.k.Registration(r.Name), keys.EncodeString(r), clientv3.WithLease(id)); err != nil {
		return fmt.Errorf("put registration: %w", err)
	}
	return nil
}

// serve keeps the registration (last, as written) current and writes the
// status on the session's lease until the session ends or ctx does.
// Every write is bounded by the session's context, and its end is looked
// at before anything else is done: a write waiting on an etcd that does
// not answer (a path that drops packets answers nothing for the whole
// request timeout) must not keep the keeper from seeing that its lease
// ran out, or it registers again that long after etcd is back, while the
// controller's grace period runs.
func (a *Agent) serve(ctx context.Context, s *concurrency.Session, w *statusWriter, last *weftv1.Registration) {
	w.lease = s.Lease()
	w.kick() // a new lease carries no status yet
	defer func() { w.lease = 0 }()
	sctx := s.Ctx() // ends with the session, and with ctx
	var retry, rewatch <-chan time.Time
	// The registration is the agent's: one deleted or overwritten by
	// hand while the lease lives would otherwise stay so, and the
	// controller would remove a working node after the grace period.
	regs := a.watchRegistration(sctx)
	for {
		select {
		case <-s.Done():
			return
		default:
		}
		select {
		case <-ctx.Done():
			return
		case <-s.Done():
			return
		case <-w.due:
			w.write(sctx, false)
			continue
		case <-w.tick.C:
			w.write(sctx, true)
			continue
		case <-a.statusKick:
			w.kick()
			continue
		case v, ok := <-regs:
			if !ok {
				regs, rewatch = nil, time.After(regRetry)
				continue
			}
			switch {
			case v.present && v.lease == s.Lease():
				// The agent's own write (events of earlier puts may
				// arrive after a later one: the lease, not the value,
				// says whose it is).
				a.setRegHeld("")
				continue
			case v.present && v.lease != clientv3.NoLease:
				// Held on another lease: another agent with this node
				// name. Two agents writing over each other would make
				// an event of every write; this one stands back and
				// says so in its status.
				msg := fmt.Sprintf("registration %s is held on lease %x, not this agent's %x: is a second agent running with node name %q?",
					a.k.Registration(a.cfg.NodeName), int64(v.lease), int64(s.Lease()), a.cfg.NodeName)
				if a.setRegHeld(msg) {
					a.log.Error("own registration held by another lease; not writing over it", "key", a.k.Registration(a.cfg.NodeName), "lease", fmt.Sprintf("%x", int64(v.lease)))
				}
				continue
			}
			// Deleted, or written by hand without a lease.
			a.setRegHeld("")
			a.log.Warn("own registration deleted or changed by another writer; writing it again", "key", a.k.Registration(a.cfg.NodeName))
			last = nil
		case <-rewatch:
			rewatch = nil
			regs = a.watchRegistration(sctx)
			continue
		case <-a.regKick:
		case <-retry:
		}
		// A changed underlay IP or overlay MAC: rewrite the registration
		// until it is in. A poke that changed nothing (one that was
		// pending while the registration was first written) writes
		// nothing: every put makes the controller look at the node.
		retry = nil
		reg := a.registration(a.view.Load())
		if proto.Equal(reg, last) {
			continue
		}
		if err := a.putRegistration(sctx, s.Lease(), reg); err != nil {
			if sctx.Err() != nil {
				continue // the session ended: registering again writes reg
			}
			a.log.Warn("update registration", "error", err, "retry_in", regRetry)
			retry = time.After(regRetry)
			continue
		}
		last = reg
	}
}

// regSeen is the agent's registration key as etcd holds it: present or
// not, and the lease it is on.
type regSeen struct {
	present bool
	lease   clientv3.LeaseID
}

// watchRegistration sends the agent's registration key as etcd holds it:
// first as read when the watch starts, then after every change from that
// read's revision on. The channel closes when ctx ends or the watch fails.
func (a *Agent) watchRegistration(ctx context.Context) <-chan regSeen {
	out := make(chan regSeen, 1)
	key := a.k.Registration(a.cfg.NodeName)
	go func() {
		defer close(out)
		send := func(v regSeen) bool {
			select {
			case out <- v:
				return true
			case <-ctx.Done():
				return false
			}
		}
		rctx, rcancel := context.WithTimeout(ctx, a.requestTimeout())
		r, err := a.cfg.Client.Get(rctx, key)
		rcancel()
		if err != nil {
			return
		}
		var first regSeen
		if len(r.Kvs) > 0 {
			first = regSeen{present: true, lease: clientv3.LeaseID(r.Kvs[0].Lease)}
		}
		if !send(first) {
			return
		}
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		defer cancel()
		for resp := range a.cfg.Client.Watch(wctx, key, clientv3.WithRev(r.Header.Revision+1)) {
			if resp.Err() != nil {
				return
			}
			for _, ev := range resp.Events {
				var v regSeen
				if ev.Type == mvccpb.PUT {
					v = regSeen{present: true, lease: clientv3.LeaseID(ev.Kv.Lease)}
				}
				if !send(v) {
					return
				}
			}
		}
	}()
	return out
}

// setRegHeld records why the registration is not the agent's ("" when it
// is) and asks for a status write when that changed; it reports whether
// it did.
func (a *Agent) setRegHeld(msg string) bool {
	old := a.regHeld.Load()
	if (old == nil && msg == "") || (old != nil && *old == msg) {
		return false
	}
	if msg == "" {
		a.regHeld.Store(nil)
	} else {
		a.regHeld.Store(&msg)
	}
	poke(a.statusKick)
	return true
}

// statusWriter writes /weft/status/<node> on the lease StatusMinInterval
// (plus jitter) after a change and every StatusInterval; the periodic
// write also tells the agent whether etcd is reachable while the watch
// quietly retries. It belongs to the lease keeper's goroutine.
type statusWriter struct {
	a     *Agent
	lease clientv3.LeaseID // 0 while there is none
	due   <-chan time.Time // a debounced write is pending
	tick  *time.Ticker
	last  *weftv1.AgentStatus
	// lastLease is the lease last written on; lastErr what was last
	// reported to the converge loop.
	lastLease clientv3.LeaseID
	lastErr   error
	reported  bool
}

// kick schedules a write after the debounce, unless one is pending:
// a burst of changes becomes one write, and a thousand agents that all
// applied the same event do not all write in the same instant.
func (w *statusWriter) kick() {
	if w.tick == nil {
		w.tick = time.NewTicker(w.a.cfg.StatusInterval)
	}
	if w.due == nil {
		d := w.a.cfg.StatusMinInterval
		w.due = time.After(d + rand.N(d/2+1))
	}
}

func (w *statusWriter) stop() {
	if w.tick != nil {
		w.tick.Stop()
	}
}

func (w *statusWriter) write(ctx context.Context, periodic bool) {
	if !periodic {
		w.due = nil
	}
	if w.lease == 0 {
		return
	}
	a := w.a
	st := a.Status()
	if !periodic && w.lease == w.lastLease && proto.Equal(st, w.last) {
		return
	}
	out := proto.Clone(st).(*weftv1.AgentStatus)
	out.Time = time.Now().UTC().Format(time.RFC3339Nano)
	rctx, cancel := context.WithTimeout(ctx, a.requestTimeout())
	_, err := a.cfg.Client.Put(rctx, a.k.Status(a.cfg.NodeName), keys.EncodeString(out), clientv3.WithLease(w.lease))
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		w.storeHealth(ctx, fmt.Errorf("write status: %w", err))
		return
	}
	w.last, w.lastLease = st, w.lease
	w.storeHealth(ctx, nil)
}

// storeHealth tells the converge loop whether etcd takes the lease
// keeper's writes, when that changed.
func (w *statusWriter) storeHealth(ctx context.Context, err error) {
	if w.reported && errText(err) == errText(w.lastErr) {
		return
	}
	w.reported, w.lastErr = true, err
	w.a.send(ctx, storeHealth{err})
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// statusRefusedRoutes is how many refused BGP routes the status lists.
const statusRefusedRoutes = 64

// Status returns the agent's status as it would be reported now.
func (a *Agent) Status() *weftv1.AgentStatus {
	v := a.view.Load()
	own, _ := a.healthParts(v)
	st := &weftv1.AgentStatus{
		Name:        a.cfg.NodeName,
		AppliedSeq:  v.applied,
		HeadSeq:     max(v.head, v.applied),
		BgpSessions: a.bgpSessions(v),
		// Not degraded: waiting for the NodeAdded is no fault.
		NotConverged: v.unconverged,
	}
	if a.prober != nil {
		reachStatus(st, a.prober.ReportFirst(statusUnreachable))
	}
	held := a.regHeld.Load()
	st.Degraded = len(own) > 0 || st.UnreachableCount > 0 || held != nil
	// Unreachable peers have their own field; last_error stays for
	// errors of the agent itself.
	switch {
	case held != nil:
		st.LastError = *held
	case v.syncErr != nil:
		st.LastError = v.syncErr.Error()
	case len(own) > 0:
		st.LastError = own[0]
	case v.bgpErr != nil:
		st.LastError = v.bgpErr.Error()
	}
	for _, r := range v.refused {
		st.Refused = append(st.Refused, r.String())
	}
	// Refused BGP routes: the first few in words, all in the count (a
	// router may send a full table).
	st.BgpRefusedCount = uint32(len(v.plan.RefusedRoutes))
	for _, r := range v.plan.RefusedRoutes[:min(len(v.plan.RefusedRoutes), statusRefusedRoutes)] {
		st.BgpRefusedRoutes = append(st.BgpRefusedRoutes, r.String())
	}
	for _, p := range v.plan.Problems {
		st.PeerProblems = append(st.PeerProblems, &weftv1.PeerProblem{Node: p.Node, Reason: p.Reason})
	}
	if d := v.synced; d != nil {
		st.Mode = string(d.Mode)
		st.TunnelEntries = uint32(len(d.Tunnels))
		st.RouteEntries = uint32(len(d.Routes) + len(d.ClusterCIDRs))
		for _, p := range d.LocalPodCIDRs {
			st.PodCidrs = append(st.PodCidrs, p.String())
		}
		st.Mtu = uint32(v.plan.PodMTU)
	}
	return st
}
