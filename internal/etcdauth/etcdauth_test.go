package etcdauth_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/internal/etcdauth"
	"github.com/weftnet/weft/proto/keys"
	"github.com/weftnet/weft/testenv/etcdtest"
)

// denied: etcd refused for want of permission. A cancelled watch carries
// the refusal as text only.
func denied(err error) bool {
	return err != nil && (errors.Is(err, rpctypes.ErrPermissionDenied) || strings.Contains(err.Error(), "etcdserver: permission denied"))
}

func TestNames(t *testing.T) {
	for _, tc := range []struct{ prefix, node, controller string }{
		{"/weft", "weft-node-n1", "weft-controller"},
		{"", "weft-node-n1", "weft-controller"},
		{"/prod/net/", "prod/net-node-n1", "prod/net-controller"},
	} {
		n := etcdauth.NamesFor(keys.New(tc.prefix))
		if n.Node("n1") != tc.node || n.Controller() != tc.controller {
			t.Errorf("prefix %q: node %q controller %q, want %q %q", tc.prefix, n.Node("n1"), n.Controller(), tc.node, tc.controller)
		}
	}
	// Every key a role names lies under the cluster's prefix.
	l := keys.New("/prod/net")
	roles := append(etcdauth.ClusterRoles(l), etcdauth.NodeRole(l, "n1"))
	for _, r := range roles {
		for _, p := range r.Perms {
			if !strings.HasPrefix(p.Key, "/prod/net/") || (p.End != "" && !strings.HasPrefix(p.End, "/prod/net")) {
				t.Errorf("role %s: %s outside the prefix", r.Name, p)
			}
		}
	}
}

// setup turns auth on as root and returns root's client.
func setup(t *testing.T, s *etcdtest.Secure, l keys.Layout, nodes ...string) *clientv3.Client {
	t.Helper()
	root := s.ClientAs(t, etcdauth.Root)
	rep, err := etcdauth.Setup(etcdtest.Ctx(t), root, l, nodes)
	if err != nil {
		t.Fatalf("setup: %v\n%v", err, rep)
	}
	if !rep.Changed() {
		t.Fatalf("first setup changed nothing:\n%v", rep)
	}
	return root
}

func TestSetupIsIdempotentAndRepairs(t *testing.T) {
	s := etcdtest.NewSecure(t)
	l := keys.New("/weft")
	n := etcdauth.NamesFor(l)
	root := setup(t, s, l, "n1")
	ctx := etcdtest.Ctx(t)
	st, err := root.AuthStatus(ctx)
	if err != nil || !st.Enabled {
		t.Fatalf("auth status %v, %v; want enabled", st, err)
	}

	rep, err := etcdauth.Setup(ctx, root, l, []string{"n1"})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Changed() {
		t.Fatalf("second setup changed something:\n%v", rep)
	}
	if last := rep[len(rep)-1]; last.String() != "auth: enabled already" {
		t.Errorf("last line %q", last)
	}

	// Someone widened a node's role and gave the reader another role:
	// setup takes both back.
	if _, err := root.RoleGrantPermission(ctx, n.Node("n1"), "/weft/", clientv3.GetPrefixRangeEnd("/weft/"), clientv3.PermissionType(clientv3.PermReadWrite)); err != nil {
		t.Fatal(err)
	}
	if _, err := root.UserGrantRole(ctx, n.Reader(), n.Controller()); err != nil {
		t.Fatal(err)
	}
	rep, err = etcdauth.Setup(ctx, root, l, []string{"n1"})
	if err != nil {
		t.Fatal(err)
	}
	text := []string{}
	for _, c := range rep {
		if c.Changed {
			text = append(text, c.String())
		}
	}
	want := []string{
		"user weft-reader: revoked role weft-controller",
		"role weft-node-n1: revoked readwrite [/weft/, /weft0)",
	}
	for _, w := range want {
		found := false
		for _, got := range text {
			found = found || got == w
		}
		if !found {
			t.Errorf("repair report lacks %q:\n%s", w, strings.Join(text, "\n"))
		}
	}
	if len(text) != len(want) {
		t.Errorf("repair changed %d things, want %d:\n%s", len(text), len(want), strings.Join(text, "\n"))
	}
	// And n1 may again write only its own keys.
	n1 := s.ClientAs(t, n.Node("n1"))
	if _, err := n1.Put(ctx, "/weft/nodes/n1", "x"); !denied(err) {
		t.Errorf("after repair n1 writes nodes/n1: %v", err)
	}
}

func TestOnlyRootChangesAuth(t *testing.T) {
	s := etcdtest.NewSecure(t)
	l := keys.New("/weft")
	n := etcdauth.NamesFor(l)
	setup(t, s, l)
	ctx := etcdtest.Ctx(t)
	for _, user := range []string{n.Operator(), n.Controller(), n.Node("n1"), "stranger"} {
		c := s.ClientAs(t, user)
		if _, err := etcdauth.Setup(ctx, c, l, nil); err == nil {
			t.Errorf("%s ran setup", user)
		}
		if _, err := etcdauth.AddNode(ctx, c, l, "n9"); err == nil {
			t.Errorf("%s added a node user", user)
		}
	}
}

// TestRoles checks each identity against each key it may or may not
// touch, on a store with auth on.
func TestRoles(t *testing.T) {
	s := etcdtest.NewSecure(t)
	l := keys.New("/weft")
	n := etcdauth.NamesFor(l)
	root := setup(t, s, l, "n1", "n2")
	ctx := etcdtest.Ctx(t)
	// A store with something in every key.
	for _, k := range []string{l.Config(), l.Head(), l.Event(1), l.Node("n1"), l.Node("n2"), l.Subnet(netip.MustParsePrefix("10.244.1.0/24")),
		l.DesiredConfig(), l.DesiredStatus(), l.Problem("n3"), "/other/x"} {
		if _, err := root.Put(ctx, k, "v"); err != nil {
			t.Fatal(err)
		}
	}
	n2 := s.ClientAs(t, n.Node("n2"))
	lease2, err := n2.Grant(ctx, 30)
	if err != nil {
		t.Fatalf("n2 grants a lease: %v", err)
	}
	if _, err := n2.Put(ctx, l.Registration("n2"), "reg", clientv3.WithLease(lease2.ID)); err != nil {
		t.Fatalf("n2 registers: %v", err)
	}

	n1 := s.ClientAs(t, n.Node("n1"))
	// What a node's agent does: list, watch, register and report on its lease.
	for _, k := range []string{l.Config(), l.Head()} {
		if _, err := n1.Get(ctx, k); err != nil {
			t.Errorf("n1 reads %s: %v", k, err)
		}
	}
	for _, p := range []string{l.Events(), l.Nodes(), l.Subnets()} {
		if _, err := n1.Get(ctx, p, clientv3.WithPrefix()); err != nil {
			t.Errorf("n1 lists %s: %v", p, err)
		}
	}
	if _, err := n1.Txn(ctx).Then(clientv3.OpGet(l.Head()), clientv3.OpGet(l.Config())).Commit(); err != nil {
		t.Errorf("n1 reads head and config in one txn: %v", err)
	}
	wctx, cancel := context.WithCancel(ctx)
	if w := <-n1.Watch(wctx, l.Events(), clientv3.WithPrefix(), clientv3.WithRev(1)); w.Err() != nil || len(w.Events) != 1 {
		t.Errorf("n1 watches events: %v, %d events", w.Err(), len(w.Events))
	}
	cancel()
	wctx, cancel = context.WithCancel(ctx)
	if w := <-n1.Watch(wctx, l.Registrations(), clientv3.WithPrefix(), clientv3.WithRev(1)); !denied(w.Err()) {
		t.Errorf("n1 watches every registration: %v", w.Err())
	}
	cancel()
	lease1, err := n1.Grant(ctx, 30)
	if err != nil {
		t.Fatalf("n1 grants a lease: %v", err)
	}
	for _, k := range []string{l.Registration("n1"), l.Status("n1")} {
		if _, err := n1.Put(ctx, k, "v", clientv3.WithLease(lease1.ID)); err != nil {
			t.Errorf("n1 writes its %s: %v", k, err)
		}
	}
	if _, err := n1.KeepAliveOnce(ctx, lease1.ID); err != nil {
		t.Errorf("n1 keeps its lease: %v", err)
	}

	// What it must not: another node's keys, the log, the projection,
	// the config, or another node's lease.
	for _, k := range []string{l.Registration("n2"), l.Status("n2"), l.Registration("n10"), l.Event(2), l.Head(), l.Node("n1"),
		l.Node("n2"), l.Config(), l.DesiredConfig(), l.DesiredStatus(), l.Problem("n1"), l.Election() + "/x", "/other/x"} {
		if _, err := n1.Put(ctx, k, "hijack"); !denied(err) {
			t.Errorf("n1 put %s: %v, want permission denied", k, err)
		}
	}
	if _, err := n1.Delete(ctx, l.Registration("n2")); !denied(err) {
		t.Errorf("n1 deletes n2's registration: %v", err)
	}
	if _, err := n1.Delete(ctx, l.Registrations(), clientv3.WithPrefix()); !denied(err) {
		t.Errorf("n1 deletes every registration: %v", err)
	}
	if _, err := n1.Put(ctx, l.Registration("n1"), "v", clientv3.WithLease(lease2.ID)); !denied(err) {
		t.Errorf("n1 attaches its key to n2's lease: %v", err)
	}
	if _, err := n1.Revoke(ctx, lease2.ID); !denied(err) {
		t.Errorf("n1 revokes n2's lease: %v", err)
	}
	if _, err := n1.KeepAliveOnce(ctx, lease2.ID); !denied(err) {
		t.Errorf("n1 keeps n2's lease alive: %v", err)
	}
	for _, k := range []string{l.Registration("n2"), l.DesiredConfig(), l.Problem("n3"), "/other/x"} {
		if _, err := n1.Get(ctx, k); !denied(err) {
			t.Errorf("n1 reads %s: %v, want permission denied", k, err)
		}
	}

	// Operators: the reader reads everything of the cluster and writes
	// nothing; the operator also asks for configs.
	reader := s.ClientAs(t, n.Reader())
	if _, err := reader.Get(ctx, l.Root(), clientv3.WithPrefix()); err != nil {
		t.Errorf("reader reads the cluster: %v", err)
	}
	if _, err := reader.Put(ctx, l.DesiredConfig(), "{}"); !denied(err) {
		t.Errorf("reader writes desired config: %v", err)
	}
	op := s.ClientAs(t, n.Operator())
	if _, err := op.Put(ctx, l.DesiredConfig(), "{}"); err != nil {
		t.Errorf("operator writes desired config: %v", err)
	}
	for _, k := range []string{l.Config(), l.DesiredStatus(), l.Head(), l.Registration("n1")} {
		if _, err := op.Put(ctx, k, "v"); !denied(err) {
			t.Errorf("operator put %s: %v", k, err)
		}
	}
	if _, err := op.Get(ctx, "/other/x"); !denied(err) {
		t.Errorf("operator reads another cluster's key: %v", err)
	}

	// The controller: all of its cluster, nothing else.
	ctl := s.ClientAs(t, n.Controller())
	for _, k := range []string{l.Event(2), l.Head(), l.Node("n1"), l.DesiredStatus(), l.Problem("n1"), l.Election() + "/x"} {
		if _, err := ctl.Put(ctx, k, "v"); err != nil {
			t.Errorf("controller put %s: %v", k, err)
		}
	}
	if _, err := ctl.Delete(ctx, l.Registration("n2")); err != nil {
		t.Errorf("controller deletes a registration: %v", err)
	}
	if _, err := ctl.Put(ctx, "/other/x", "v"); !denied(err) {
		t.Errorf("controller writes outside its prefix: %v", err)
	}

	// A certificate of the right CA with a CN that is no user gets nothing.
	stranger := s.ClientAs(t, "stranger")
	if _, err := stranger.Get(ctx, l.Config()); !denied(err) {
		t.Errorf("stranger reads config: %v", err)
	}
}

func TestRemoveNode(t *testing.T) {
	s := etcdtest.NewSecure(t)
	l := keys.New("/weft")
	n := etcdauth.NamesFor(l)
	root := setup(t, s, l, "n1")
	ctx := etcdtest.Ctx(t)
	n1 := s.ClientAs(t, n.Node("n1"))
	// A lease as long as the agent may ask for: the keys must not wait
	// for it.
	lease, err := n1.Grant(ctx, 3600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n1.Put(ctx, l.Registration("n1"), "reg", clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	// Its status on a lease that is not its own (a node may attach its
	// keys to any lease): removing the node must not revoke it.
	other, err := root.Grant(ctx, 3600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n1.Put(ctx, l.Status("n1"), "v", clientv3.WithLease(other.ID)); err != nil {
		t.Fatal(err)
	}
	rep, err := etcdauth.RemoveNode(ctx, root, l, "n1")
	if err != nil || !rep.Changed() {
		t.Fatalf("remove: %v\n%v", err, rep)
	}
	for _, k := range []string{l.Registration("n1"), l.Status("n1")} {
		if r, err := root.Get(ctx, k); err != nil || len(r.Kvs) != 0 {
			t.Errorf("%s after remove-node: %v %v", k, err, r.Kvs)
		}
		if !strings.Contains(fmt.Sprint(rep), "key "+k+": deleted") {
			t.Errorf("report does not name %s deleted:\n%v", k, rep)
		}
	}
	if ttl, err := root.TimeToLive(ctx, other.ID); err != nil || ttl.TTL <= 0 {
		t.Errorf("the other lease was revoked with the node's keys: %v %v", err, ttl)
	}
	if _, err := n1.Put(ctx, l.Status("n1"), "v"); !denied(err) {
		t.Errorf("removed node writes its status: %v", err)
	}
	if _, err := n1.Put(ctx, l.Registration("n1"), "reg", clientv3.WithLease(lease.ID)); !denied(err) {
		t.Errorf("removed node registers again: %v", err)
	}
	// Its lease holds no key any more: renewing it (etcd checks a
	// renewal against the lease's keys) keeps nothing alive.
	if ttl, err := root.TimeToLive(ctx, lease.ID, clientv3.WithAttachedKeys()); err != nil || len(ttl.Keys) != 0 {
		t.Errorf("the node's lease still holds keys: %v %v", err, ttl)
	}
	rep, err = etcdauth.RemoveNode(ctx, root, l, "n1")
	if err != nil || rep.Changed() {
		t.Errorf("second remove: %v\n%v", err, rep)
	}
	if _, err := etcdauth.AddNode(ctx, root, l, "bad/name"); err == nil {
		t.Error("added a node whose name has a slash")
	}
}
