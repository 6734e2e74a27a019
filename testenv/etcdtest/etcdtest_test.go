package etcdtest

import (
	"context"
	"errors"
	"net"
	"net/url"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func TestStartPutGetCompact(t *testing.T) {
	_, c := New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	put, err := c.Put(ctx, "/k", "v1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, "/k", "v2"); err != nil {
		t.Fatal(err)
	}
	r, err := c.Get(ctx, "/k")
	if err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "v2" {
		t.Fatalf("get /k = %v, %v; want v2", r, err)
	}
	if _, err := Compact(ctx, c); err != nil {
		t.Fatal(err)
	}
	_, err = c.Get(ctx, "/k", clientv3.WithRev(put.Header.Revision))
	if !errors.Is(err, rpctypes.ErrCompacted) {
		t.Fatalf("get at compacted revision: err = %v, want ErrCompacted", err)
	}
}

// TestStartPicksAgainWhenAPortIsTaken takes the port start picked for the
// client URL before etcd binds it (as another test process may between a
// pick and the bind) and expects a member on fresh ports instead of the
// "address already in use" failure.
func TestStartPicksAgainWhenAPortIsTaken(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	picks := 0
	pick := func() (*url.URL, *url.URL, error) {
		picks++
		client, peer, err := freeURLs()
		if picks == 1 {
			client = &url.URL{Scheme: "http", Host: taken.Addr().String()}
		}
		return client, peer, err
	}
	s, err := start(t.TempDir(), nil, pick, "")
	if err != nil {
		t.Fatalf("start with a taken client port: %v", err)
	}
	defer s.Close()
	if picks != 2 {
		t.Errorf("picked ports %d times, want 2 (one taken, one free)", picks)
	}
	if s.Endpoints[0] == "http://"+taken.Addr().String() {
		t.Errorf("member serves on the taken port %s", s.Endpoints[0])
	}
	c, err := s.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Put(ctx, "/k", "v"); err != nil {
		t.Fatalf("put on the member started on fresh ports: %v", err)
	}
}
