package controller

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/weftnet/weft/proto/configfile"
	"github.com/weftnet/weft/proto/keys"
	"github.com/weftnet/weft/proto/validate"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// watchDesired sends every value of /weft/desired/config that has no
// answer yet: first the current one when its status answers an older
// revision, then each later put. It returns when ctx ends.
func (c *Controller) watchDesired(ctx context.Context, out chan<- desired) {
	k := c.opt.Layout
	for ctx.Err() == nil {
		r, err := c.opt.Client.Txn(ctx).Then(clientv3.OpGet(k.DesiredConfig()), clientv3.OpGet(k.DesiredStatus())).Commit()
		if err != nil {
			c.log.Warn("read desired config", "error", err)
			sleep(ctx, time.Second)
			continue
		}
		if kvs := r.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
			var answered int64
			if s := r.Responses[1].GetResponseRange().Kvs; len(s) > 0 {
				if st, err := keys.DecodeConfigStatus(s[0].Value); err == nil {
					answered = st.DesiredRevision
				}
			}
			if kvs[0].ModRevision != answered {
				select {
				case out <- desired{value: kvs[0].Value, rev: kvs[0].ModRevision}:
				case <-ctx.Done():
					return
				}
			}
		}
		wc := c.opt.Client.Watch(clientv3.WithRequireLeader(ctx), k.DesiredConfig(), clientv3.WithRev(r.Header.Revision+1))
		for resp := range wc {
			if resp.Err() != nil {
				break
			}
			for _, ev := range resp.Events {
				if ev.Type != mvccpb.PUT {
					continue
				}
				select {
				case out <- desired{value: ev.Kv.Value, rev: ev.Kv.ModRevision}:
				case <-ctx.Done():
					return
				}
			}
		}
		sleep(ctx, 200*time.Millisecond)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// configRequest answers one desired config: it validates it, appends
// ConfigChanged when it differs from the config in force, and writes the
// answer to /weft/desired/status. A refused config changes nothing else.
// On an error (a conflict, etcd away) the caller keeps the request and
// asks again after reading the store again, so every desired config is
// answered.
func (l *leader) configRequest(ctx context.Context, d desired) error {
	status := &weftv1.ConfigStatus{DesiredRevision: d.rev, Time: time.Now().UTC().Format(time.RFC3339)}
	cfg, reason := l.judge(d.value)
	switch {
	case reason != "":
		status.Reason = reason
		l.m.ConfigRefusals.Inc()
		l.log.Warn("desired config refused", "key", l.opt.Layout.DesiredConfig(), "revision", d.rev, "reason", reason)
	case proto.Equal(cfg, l.st.State().Config):
		status.Accepted = true
		status.Reason = "unchanged: equal to the config in force"
	default:
		if _, err := l.st.Append(ctx, configEvent(cfg)); err != nil {
			return err
		}
		status.Accepted, status.Seq = true, l.st.Head()
		l.log.Info("config changed", "seq", status.Seq, "revision", d.rev)
		if err := l.rebuild(ctx); err != nil {
			return err
		}
	}
	return l.st.Put(ctx, l.opt.Layout.DesiredStatus(), keys.EncodeString(status))
}

// judge decodes, defaults and validates a desired config; reason names
// the field at fault when it is refused.
func (l *leader) judge(value []byte) (*weftv1.ClusterConfig, string) {
	cfg, err := configfile.DecodeJSON(value)
	if err != nil {
		return nil, err.Error()
	}
	cfg = validate.WithDefaults(cfg)
	// The address plan rule first: a config that removes a family nodes
	// still hold is refused for that, whatever else is wrong with it.
	cur := l.st.State().Config
	nodes := l.st.State().Nodes
	if reason := planChange(cur, cfg, nodes); reason != "" {
		return nil, fmt.Sprintf("%v: %s", validate.ErrInvalid, reason)
	}
	if err := validate.Config(cfg); err != nil {
		return nil, err.Error()
	}
	var lacking []string
	for _, name := range sortedNames(nodes) {
		if missing := lacks(cfg.Backend, nodes[name].Capabilities); missing != "" {
			lacking = append(lacking, name)
		}
	}
	if len(lacking) > 0 {
		return nil, fmt.Sprintf("%v: backend: %s needs the node capability %q, which %d of %d nodes lack: %s",
			validate.ErrInvalid, cfg.Backend, backendNeeds[cfg.Backend], len(lacking), len(nodes), strings.Join(lacking, ", "))
	}
	for _, f := range []struct{ name, cidr string }{{"cluster_cidr", cfg.ClusterCidr}, {"cluster_cidr_v6", cfg.ClusterCidrV6}} {
		p, err := netip.ParsePrefix(f.cidr)
		if err != nil {
			continue
		}
		for _, name := range sortedNames(nodes) {
			for _, a := range validate.UnderlayAddrs(nodes[name]) {
				if p.Contains(a) {
					return nil, fmt.Sprintf("%v: %s: %s overlaps the underlay: it contains node %q's address %s", validate.ErrInvalid, f.name, p, name, a)
				}
			}
		}
	}
	return cfg, ""
}

// planChange applies the rule for address plan changes (docs/DESIGN.md),
// one family at a time: while any node holds a pod CIDR of a family, that
// family's cluster CIDR and node mask stay as they are (changing or
// removing them would strand the addresses pods hold in those subnets);
// a family no node holds may be added, changed or removed. Adding a family
// to a running cluster (an IPv6 cluster CIDR beside the IPv4 one) is
// therefore allowed, and the controller gives every node a pod CIDR of it.
// It returns the refusal, naming the field, or "".
func planChange(cur, next *weftv1.ClusterConfig, nodes map[string]*weftv1.Node) string {
	if cur == nil {
		return ""
	}
	held := [2]int{} // nodes holding an IPv4, an IPv6 pod CIDR
	for _, n := range nodes {
		var has [2]bool
		for _, s := range n.PodCidrs {
			if p, err := netip.ParsePrefix(s); err == nil {
				has[b2i(p.Addr().Is6())] = true
			}
		}
		for i := range has {
			if has[i] {
				held[i]++
			}
		}
	}
	for _, f := range []struct {
		v6               bool
		cidr, mask       string
		oldCIDR, newCIDR string
		oldMask, newMask uint32
	}{
		{false, "cluster_cidr", "node_mask_size", cur.ClusterCidr, next.ClusterCidr, cur.NodeMaskSize, next.NodeMaskSize},
		{true, "cluster_cidr_v6", "node_mask_size_v6", cur.ClusterCidrV6, next.ClusterCidrV6, cur.NodeMaskSizeV6, next.NodeMaskSizeV6},
	} {
		n := held[b2i(f.v6)]
		if n == 0 {
			continue
		}
		fam := "IPv4"
		if f.v6 {
			fam = "IPv6"
		}
		why := fmt.Sprintf("while %d nodes hold %s pod CIDRs from it (pods hold addresses in them; remove those nodes first)", n, fam)
		switch {
		case f.newCIDR == "":
			return fmt.Sprintf("%s: cannot remove %s %s", f.cidr, f.oldCIDR, why)
		case f.newCIDR != f.oldCIDR:
			return fmt.Sprintf("%s: cannot change from %s to %s %s", f.cidr, f.oldCIDR, f.newCIDR, why)
		case f.newMask != f.oldMask:
			return fmt.Sprintf("%s: cannot change from %d to %d %s", f.mask, f.oldMask, f.newMask, why)
		}
	}
	return ""
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func sortedNames(m map[string]*weftv1.Node) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
