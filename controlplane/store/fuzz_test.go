package store_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/weftnet/weft/controlplane/ipam"
	"github.com/weftnet/weft/proto/fold"
	"github.com/weftnet/weft/proto/keys"
	"github.com/weftnet/weft/proto/validate"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// Fuzz targets for every decoder of data the control plane reads from
// etcd. `go test` runs their seeds; `go test -fuzz=FuzzX` explores.

func FuzzDecodeEvent(f *testing.F) {
	f.Add(keys.Encode(cfgEvent()))
	f.Add([]byte(`{"seq":"2","node_added":{"node":{"name":"a","underlay_ip":"192.168.0.1","pod_cidrs":["10.244.1.0/24"]}}}`))
	f.Add([]byte(`{"seq":"2","node_removed":{"name":"a"}}`))
	f.Add([]byte(`{"seq":2,"nodeUpdated":{"node":{"name":"a"}}}`))
	f.Add([]byte(`{"seq":"18446744073709551615"}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := keys.DecodeEvent(b)
		if err != nil {
			return
		}
		cfg := validate.WithDefaults(cfgEvent().GetConfigChanged().Config)
		_ = validate.Event(cfg, e)
		st := fold.New()
		st.Head = e.GetSeq() - 1
		before := st.Head
		if err := st.Apply(e); err != nil && st.Head != before {
			t.Fatalf("failed Apply moved head to %d", st.Head)
		}
	})
}

func FuzzDecodeConfig(f *testing.F) {
	f.Add(keys.Encode(cfgEvent().GetConfigChanged().Config))
	f.Add([]byte(`{"cluster_cidr":"10.0.0.0/8","cluster_cidr_v6":"fd00::/48","node_mask_size":30}`))
	f.Add([]byte(`{"clusterCidr":"10.0.0.0/31","nodeMaskSize":32,"vni":16777216}`))
	f.Add([]byte(`{"cluster_cidr":"fd00::/8","cluster_cidr_v6":"fd00::/8","node_mask_size_v6":128}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := keys.DecodeConfig(b)
		if err != nil {
			return
		}
		c = validate.WithDefaults(c)
		if validate.Config(c) != nil {
			return
		}
		// A config validation accepts must give a working allocator.
		a, err := ipam.New(c)
		if err != nil {
			t.Fatalf("valid config %v: allocator: %v", c, err)
		}
		got, err := a.Allocate("n", nil, nil)
		if err != nil {
			t.Fatalf("valid config %v: first allocation: %v", c, err)
		}
		if _, err := validate.PodCIDRs(c, prefixStrings(got)); err != nil {
			t.Fatalf("allocated %v outside the config: %v", got, err)
		}
	})
}

func prefixStrings(ps []netip.Prefix) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}

func FuzzDecodeNode(f *testing.F) {
	f.Add([]byte(`{"name":"a","underlay_ip":"192.168.0.1","pod_cidrs":["10.244.1.0/24","fd00::/64"],"seq":"3"}`))
	f.Add([]byte(`{"name":"a/b","underlay_ip":"::ffff:1.2.3.4"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := keys.DecodeNode(b)
		if err != nil {
			return
		}
		cfg := validate.WithDefaults(&weftv1.ClusterConfig{ClusterCidr: "10.244.0.0/16", ClusterCidrV6: "fd00::/56"})
		_ = validate.Node(cfg, n)
		st := fold.New()
		st.Nodes[n.Name] = n
		_, _ = st.Subnets()
	})
}

func FuzzDecodeRegistration(f *testing.F) {
	f.Add([]byte(`{"name":"a","underlay_ip":"192.168.0.1","pinned_pod_cidrs":["10.244.9.0/24"]}`))
	f.Add([]byte(`{"name":"a","underlay_ip":"192.168.0.1","previous_pod_cidrs":["10.244.9.0/24","fd00::/64"]}`))
	f.Add([]byte(`{"name":"","underlay_ip":"not-an-ip"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := keys.DecodeRegistration(b)
		if err != nil {
			return
		}
		if validate.Registration(r) != nil {
			return
		}
		a, _ := ipam.New(validate.WithDefaults(&weftv1.ClusterConfig{ClusterCidr: "10.244.0.0/16", ClusterCidrV6: "fd00::/56"}))
		var pins, previous []netip.Prefix
		for _, s := range r.PinnedPodCidrs {
			pins = append(pins, netip.MustParsePrefix(s)) // validated above
		}
		for _, s := range r.PreviousPodCidrs {
			previous = append(previous, netip.MustParsePrefix(s)) // validated above
		}
		got, err := a.Allocate(r.Name, pins, previous)
		if err == nil && len(got) != 2 {
			t.Fatalf("allocated %v for %v", got, r)
		}
	})
}

func FuzzDecodeOthers(f *testing.F) {
	f.Add([]byte(`{"name":"a","applied_seq":"4","head_seq":"5","peer_problems":[{"node":"b","reason":"x"}]}`))
	f.Add([]byte(`{"desired_revision":"12","accepted":false,"reason":"vni: 0"}`))
	f.Add([]byte(`{"subject":"a","reason":"exhausted"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = keys.DecodeStatus(b)
		_, _ = keys.DecodeConfigStatus(b)
		_, _ = keys.DecodeProblem(b)
	})
}

func FuzzParseHead(f *testing.F) {
	for _, s := range []string{"", "0", "17", " 42\n", "-1", "18446744073709551616", "1e3"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		seq, err := keys.ParseHead(b)
		if err != nil {
			return
		}
		if again, err := keys.ParseHead([]byte(keys.FormatHead(seq))); err != nil || again != seq {
			t.Fatalf("head %d does not round-trip: %d, %v", seq, again, err)
		}
	})
}

func FuzzEventSeq(f *testing.F) {
	f.Add(k.Event(1))
	f.Add(k.Event(18446744073709551615))
	f.Add("/weft/events/1")
	f.Add("/weft/events/-0000000000000000001")
	f.Add("/other/events/00000000000000000001")
	f.Fuzz(func(t *testing.T, key string) {
		seq, err := k.EventSeq(key)
		if err != nil {
			return
		}
		if k.Event(seq) != key && !strings.HasPrefix(key[len(k.Events()):], "+") {
			t.Fatalf("key %q parsed as %d, which renders %q", key, seq, k.Event(seq))
		}
	})
}

func FuzzParseSubnetName(f *testing.F) {
	for _, s := range []string{"10.244.1.0-24", "fd00--64", "fd00::-64", "10.0.0.1-8", "-", "a-b", "::ffff:10.0.0.0-120"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := keys.ParseSubnetName(s)
		if err != nil {
			return
		}
		q, err := keys.ParseSubnetName(keys.SubnetName(p))
		if err != nil || q != p.Masked() {
			t.Fatalf("%q -> %v -> %q -> %v, %v", s, p, keys.SubnetName(p), q, err)
		}
	})
}

func FuzzNameOf(f *testing.F) {
	f.Add(k.Node("a"))
	f.Add(k.Nodes())
	f.Add(k.Nodes() + "a/b")
	f.Fuzz(func(t *testing.T, key string) {
		name, err := keys.NameOf(k.Nodes(), key)
		if err != nil {
			return
		}
		if k.Node(name) != key {
			t.Fatalf("%q -> %q -> %q", key, name, k.Node(name))
		}
	})
}
