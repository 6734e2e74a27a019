package regsource_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/controlplane/regsource"
	"github.com/weftnet/weft/controlplane/source"
	"github.com/weftnet/weft/proto/keys"
	"github.com/weftnet/weft/proto/validate"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv/etcdtest"
)

func TestMain(m *testing.M) { etcdtest.VerifyTestMain(m) }

var k = keys.New("/weft")

func TestListThenWatch(t *testing.T) {
	_, c := etcdtest.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g, err := c.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	lease := clientv3.WithLease(g.ID)
	c.Put(ctx, k.Registration("a"), regsource.Registration(&weftv1.Registration{Name: "a", UnderlayIp: "192.168.0.1"}), lease)
	c.Put(ctx, k.Registration("bad"), `{"name":"bad","underlay_ip":"x"}`, lease)
	var mu sync.Mutex
	var syncs [][]source.Change
	var changes []source.Change
	s := regsource.New(c, k, nil)
	done := make(chan error)
	go func() {
		done <- s.Run(ctx, func(all []source.Change) {
			mu.Lock()
			syncs = append(syncs, all)
			mu.Unlock()
		}, func(ch source.Change) {
			mu.Lock()
			changes = append(changes, ch)
			mu.Unlock()
		})
	}()
	wait := func(what string, cond func() bool) {
		t.Helper()
		for end := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			mu.Lock()
			ok := cond()
			mu.Unlock()
			if ok {
				return
			}
			if time.Now().After(end) {
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	wait("sync", func() bool { return len(syncs) == 1 })
	if got := syncs[0]; len(got) != 2 || got[0].Kind != source.Upsert || got[0].Name != "a" || got[1].Kind != source.Invalid {
		t.Fatalf("sync %+v", got)
	}
	c.Put(ctx, k.Registration("b"), regsource.Registration(&weftv1.Registration{UnderlayIp: "192.168.0.2"}), lease)
	c.Delete(ctx, k.Registration("a"))
	c.Put(ctx, k.Registration("x/y"), `{}`)
	// Valid, but on no lease: it would outlive its agent.
	c.Put(ctx, k.Registration("unleased"), regsource.Registration(&weftv1.Registration{UnderlayIp: "192.168.0.3"}))
	wait("four changes", func() bool { return len(changes) == 4 })
	if ch := changes[0]; ch.Kind != source.Upsert || ch.Name != "b" || ch.Registration.Name != "b" {
		t.Fatalf("put b: %+v", ch)
	}
	if ch := changes[1]; ch.Kind != source.Gone || ch.Name != "a" || ch.Immediate {
		t.Fatalf("delete a: %+v", ch)
	}
	if ch := changes[2]; ch.Kind != source.Invalid || ch.Name != "x_y" {
		t.Fatalf("put x/y: %+v", ch)
	}
	if ch := changes[3]; ch.Kind != source.Invalid || ch.Name != "unleased" || !strings.Contains(ch.Err.Error(), "lease") {
		t.Fatalf("put unleased: %+v", ch)
	}
	cancel()
	if err := <-done; err != context.Canceled {
		t.Fatalf("run: %v", err)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add("/weft/registrations/a", []byte(`{"name":"a","underlay_ip":"192.168.0.1","pinned_pod_cidrs":["10.244.1.0/24"]}`))
	f.Add("/weft/registrations/a", []byte(`{"underlay_ip":"fe80::1"}`))
	f.Add("/weft/registrations/a/b", []byte(`{}`))
	f.Add("/weft/registrations/", []byte(`{"name":""}`))
	f.Add("/weft/registrations/a", []byte(`{"name":"b","underlay_ip":"192.168.0.1"}`))
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		ch := regsource.Decode(k, key, value, 1)
		switch ch.Kind {
		case source.Upsert:
			if ch.Registration == nil || ch.Registration.Name != ch.Name || k.Registration(ch.Name) != key {
				t.Fatalf("upsert %+v from key %q", ch, key)
			}
			if err := validate.Registration(ch.Registration); err != nil {
				t.Fatalf("upsert of an invalid registration: %v", err)
			}
		case source.Invalid:
			if ch.Err == nil {
				t.Fatal("invalid without a reason")
			}
		default:
			t.Fatalf("kind %v", ch.Kind)
		}
	})
}
