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
	cfg, err := keys.DecodeConfig(value)
	if err != nil {
		return nil, err.Error()
	}
	if err := configfile.ExplicitZero(value); err != nil {
		return nil, err.Error()
	}
	cfg = validate.WithDefaults(cfg)
	if err := validate.Config(cfg); err != nil {
		return nil, err.Error()
	}
	cur := l.st.State().Config
	nodes := l.st.State().Nodes
	if cur != nil && len(nodes) > 0 {
		// Changing the address plan under live nodes would strand their
		// subnets; weft refuses it and says so.
		for _, f := range []struct {
			name     string
			old, new any
		}{
			{"cluster_cidr", cur.ClusterCidr, cfg.ClusterCidr},
			{"cluster_cidr_v6", cur.ClusterCidrV6, cfg.ClusterCidrV6},
			{"node_mask_size", cur.NodeMaskSize, cfg.NodeMaskSize},
			{"node_mask_size_v6", cur.NodeMaskSizeV6, cfg.NodeMaskSizeV6},
		} {
			if f.old != f.new {
				return nil, fmt.Sprintf("%v: %s: cannot change from %v to %v while %d nodes hold subnets (remove them first)", validate.ErrInvalid, f.name, f.old, f.new, len(nodes))
			}
		}
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
			if a, err := netip.ParseAddr(nodes[name].UnderlayIp); err == nil && p.Contains(a.Unmap()) {
				return nil, fmt.Sprintf("%v: %s: %s overlaps the underlay: it contains node %q's address %s", validate.ErrInvalid, f.name, p, name, a)
			}
		}
	}
	return cfg, ""
}

func sortedNames(m map[string]*weftv1.Node) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
