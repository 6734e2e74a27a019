package nodeagent

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

func (a *Agent) requestTimeout() time.Duration {
	if a.cfg.Follow.RequestTimeout > 0 {
		return a.cfg.Follow.RequestTimeout
	}
	return 5 * time.Second
}

func (a *Agent) setStoreErr(err error) {
	a.mu.Lock()
	changed := (err == nil) != (a.storeErr == nil)
	a.storeErr = err
	a.mu.Unlock()
	if changed {
		a.healthChanged()
	}
}

func (a *Agent) setLease(id clientv3.LeaseID) {
	a.mu.Lock()
	a.lease = id
	a.mu.Unlock()
}

func (a *Agent) currentLease() clientv3.LeaseID {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lease
}

func (a *Agent) registration() *weftv1.Registration {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := &weftv1.Registration{
		Name:         a.cfg.NodeName,
		UnderlayIp:   a.underlay.IP.String(),
		VtepMac:      a.cfg.VTEPMAC,
		Capabilities: a.cfg.Capabilities,
		Asn:          a.cfg.ASN,
	}
	if r.VtepMac == "" {
		r.VtepMac = a.vtepMAC
	}
	if r.Capabilities == nil {
		r.Capabilities = slices.Clone(a.caps)
	}
	return r
}

// loadNodeInfo asks a NodeInfo datapath for the node's capabilities (once)
// and its overlay device's MAC (which exists already after a restart).
func (a *Agent) loadNodeInfo() {
	ni, ok := a.dp.(NodeInfo)
	if !ok {
		return
	}
	if a.cfg.Capabilities == nil {
		caps := ni.Capabilities()
		a.mu.Lock()
		a.caps = caps
		a.mu.Unlock()
		a.log.Info("node capabilities", "capabilities", caps)
	}
	a.refreshVTEPMAC()
}

// refreshVTEPMAC reads the overlay device's MAC from a NodeInfo datapath
// and, when it changed, updates the registration.
func (a *Agent) refreshVTEPMAC() {
	ni, ok := a.dp.(NodeInfo)
	if !ok || a.cfg.VTEPMAC != "" {
		return
	}
	mac, err := ni.VTEPMAC()
	if err != nil {
		a.log.Warn("read overlay device MAC; keeping the last one", "error", err)
		return
	}
	s := ""
	if mac != nil {
		s = mac.String()
	}
	a.mu.Lock()
	changed := s != a.vtepMAC
	a.vtepMAC = s
	a.mu.Unlock()
	if changed {
		a.log.Info("overlay device MAC changed; updating the registration", "vtep_mac", s)
		poke(a.regKick)
	}
}

// register keeps /weft/registrations/<node> on a lease: grant, put, keep
// alive, and grant again when the lease is lost (expired while etcd was
// unreachable, or revoked by someone). On shutdown the lease is not
// revoked: it runs out on its own, so a quick restart keeps the node's
// registration (and the controller never starts its removal grace).
func (a *Agent) register(ctx context.Context) {
	// The registration carries the underlay IP, which the converger reads.
	for {
		a.mu.Lock()
		ok := a.haveUnd
		a.mu.Unlock()
		if ok {
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-a.regKick:
		}
	}
	backoff := 100 * time.Millisecond
	wait := func() bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
		return true
	}
	for ctx.Err() == nil {
		id, err := a.grantAndPut(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			a.setStoreErr(err)
			a.log.Warn("register", "error", err, "retry_in", backoff)
			if !wait() {
				return
			}
			continue
		}
		backoff = 100 * time.Millisecond
		a.setStoreErr(nil)
		a.setLease(id)
		poke(a.statusKick)
		a.log.Info("registered", "lease", fmt.Sprintf("%x", int64(id)), "ttl", a.cfg.LeaseTTL)

		kctx, cancel := context.WithCancel(ctx)
		kach, err := a.cfg.Client.KeepAlive(kctx, id)
		if err != nil {
			cancel()
			a.log.Warn("keep lease alive", "error", err)
			continue
		}
		var retry <-chan time.Time
	alive:
		for {
			select {
			case <-ctx.Done():
				cancel()
				return
			case _, ok := <-kach:
				if !ok {
					break alive
				}
				continue
			case <-a.regKick:
			case <-retry:
			}
			// A changed underlay IP or overlay MAC: rewrite the
			// registration until it is in.
			retry = nil
			if err := a.putRegistration(ctx, id); err != nil {
				a.log.Warn("update registration", "error", err, "retry_in", time.Second)
				retry = time.After(time.Second)
			}
		}
		cancel()
		if ctx.Err() != nil {
			return
		}
		a.setLease(0)
		a.log.Warn("lease lost; registering again")
	}
}

func (a *Agent) grantAndPut(ctx context.Context) (clientv3.LeaseID, error) {
	rctx, cancel := context.WithTimeout(ctx, a.requestTimeout())
	defer cancel()
	g, err := a.cfg.Client.Grant(rctx, int64(a.cfg.LeaseTTL/time.Second))
	if err != nil {
		return 0, fmt.Errorf("grant lease: %w", err)
	}
	if err := a.putRegistration(ctx, g.ID); err != nil {
		return 0, err
	}
	return g.ID, nil
}

func (a *Agent) putRegistration(ctx context.Context, id clientv3.LeaseID) error {
	rctx, cancel := context.WithTimeout(ctx, a.requestTimeout())
	defer cancel()
	r := a.registration()
	if _, err := a.cfg.Client.Put(rctx, a.k.Registration(r.Name), keys.EncodeString(r), clientv3.WithLease(id)); err != nil {
		return fmt.Errorf("put registration: %w", err)
	}
	return nil
}

// Status returns the agent's status as it would be reported now.
func (a *Agent) Status() *weftv1.AgentStatus {
	sessions := a.bgpSessions()
	a.mu.Lock()
	defer a.mu.Unlock()
	reasons, _ := a.healthPartsLocked()
	st := &weftv1.AgentStatus{
		Name:       a.cfg.NodeName,
		AppliedSeq: a.state.Applied(),
		HeadSeq:    max(a.head, a.state.Applied()),
	}
	if a.prober != nil {
		reachStatus(st, a.prober.Report())
	}
	st.Degraded = len(reasons) > 0 || len(st.UnreachablePeers) > 0
	st.BgpSessions = sessions
	// Unreachable peers have their own field; last_error stays for
	// errors of the agent itself.
	switch {
	case a.syncErr != nil:
		st.LastError = a.syncErr.Error()
	case len(reasons) > 0:
		st.LastError = reasons[0]
	case a.bgp.err != nil:
		st.LastError = a.bgp.err.Error()
	}
	for _, r := range a.state.Refused() {
		st.Refused = append(st.Refused, r.String())
	}
	for _, p := range a.plan.Problems {
		st.PeerProblems = append(st.PeerProblems, &weftv1.PeerProblem{Node: p.Node, Reason: p.Reason})
	}
	if d := a.synced; d != nil {
		st.Mode = string(d.Mode)
		st.TunnelEntries = uint32(len(d.Tunnels))
		st.RouteEntries = uint32(len(d.Routes) + len(d.ClusterCIDRs))
		for _, p := range d.LocalPodCIDRs {
			st.PodCidrs = append(st.PodCidrs, p.String())
		}
		st.Mtu = uint32(a.plan.PodMTU)
	}
	return st
}

// reportStatus writes /weft/status/<node> on the lease StatusMinInterval
// (plus jitter) after a change and every StatusInterval; the periodic
// write also tells the agent whether etcd is reachable while the watch
// quietly retries.
func (a *Agent) reportStatus(ctx context.Context) {
	t := time.NewTicker(a.cfg.StatusInterval)
	defer t.Stop()
	var last *weftv1.AgentStatus
	var lastLease clientv3.LeaseID
	for {
		periodic := false
		select {
		case <-ctx.Done():
			return
		case <-a.statusKick:
			// Debounce with jitter: a burst of changes becomes one write,
			// and a thousand agents that all applied the same event do
			// not all write in the same instant.
			d := a.cfg.StatusMinInterval
			select {
			case <-ctx.Done():
				return
			case <-time.After(d + rand.N(d/2+1)):
			}
		case <-t.C:
			periodic = true
		}
		lease := a.currentLease()
		if lease == 0 {
			continue
		}
		st := a.Status()
		if !periodic && lease == lastLease && proto.Equal(st, last) {
			continue
		}
		out := proto.Clone(st).(*weftv1.AgentStatus)
		out.Time = time.Now().UTC().Format(time.RFC3339Nano)
		rctx, cancel := context.WithTimeout(ctx, a.requestTimeout())
		_, err := a.cfg.Client.Put(rctx, a.k.Status(a.cfg.NodeName), keys.EncodeString(out), clientv3.WithLease(lease))
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			a.setStoreErr(fmt.Errorf("write status: %w", err))
			continue
		}
		last, lastLease = st, lease
		a.setStoreErr(nil)
	}
}
