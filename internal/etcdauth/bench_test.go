package etcdauth_test

import (
	"context"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/internal/etcdauth"
	"github.com/weftnet/weft/proto/keys"
	"github.com/weftnet/weft/testenv/etcdtest"
)

// BenchmarkStatusPut is an agent's status write on its lease: plain etcd
// against TLS with client certificates and auth on (the node's role
// checked on every write).
func BenchmarkStatusPut(b *testing.B) {
	l := keys.New("/weft")
	run := func(b *testing.B, c *clientv3.Client) {
		ctx := context.Background()
		lease, err := c.Grant(ctx, 60)
		if err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := c.Put(ctx, l.Status("n1"), `{"applied_seq":1}`, clientv3.WithLease(lease.ID)); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("plain", func(b *testing.B) {
		_, c := etcdtest.New(b)
		run(b, c)
	})
	b.Run("tls", func(b *testing.B) {
		s := etcdtest.NewSecure(b)
		run(b, s.ClientAs(b, etcdauth.NamesFor(l).Node("n1")))
	})
	b.Run("tls-auth", func(b *testing.B) {
		s := etcdtest.NewSecure(b)
		root := s.ClientAs(b, etcdauth.Root)
		if _, err := etcdauth.Setup(context.Background(), root, l, []string{"n1"}); err != nil {
			b.Fatal(err)
		}
		run(b, s.ClientAs(b, etcdauth.NamesFor(l).Node("n1")))
	})
}
