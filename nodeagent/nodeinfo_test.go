package nodeagent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/nodeagent/follow"
	"github.com/weftnet/weft/nodeagent/internal/fakedp"
	"github.com/weftnet/weft/nodeagent/internal/logtest"
	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv/etcdtest"
)

// infoDP is the fake datapath with NodeInfo: its "device" exists once a
// Sync put an overlay into the kernel, with the MAC the spec asked for
// unless setMAC changed it behind weft's back.
type infoDP struct {
	*fakedp.Datapath
	mu  sync.Mutex
	mac net.HardwareAddr
}

func (d *infoDP) Capabilities() []string { return []string{"tcx", "vxlan", "ipv6"} }

func (d *infoDP) VTEPMAC() (net.HardwareAddr, error) {
	if k := d.Kernel(); k == nil || k.Overlay == nil {
		return nil, nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.mac != nil {
		return d.mac, nil
	}
	mac := d.Kernel().Overlay.MAC
	return net.HardwareAddr(mac[:]), nil
}

func (d *infoDP) setMAC(s string) {
	mac, _ := net.ParseMAC(s)
	d.mu.Lock()
	d.mac = mac
	d.mu.Unlock()
}

var _ NodeInfo = (*infoDP)(nil)

func TestRegistrationCarriesCapabilitiesAndVTEPMAC(t *testing.T) {
	_, c := etcdtest.New(t)
	ctx := context.Background()
	l, err := logtest.New(ctx, c, "/weft")
	if err != nil {
		t.Fatal(err)
	}
	dp := &infoDP{Datapath: fakedp.New(testUnderlay())}
	a, err := New(Config{
		Client:            c,
		NodeName:          "n1",
		Datapath:          dp,
		LeaseTTL:          2 * time.Second,
		ReconcileInterval: 50 * time.Millisecond,
		StatusMinInterval: 10 * time.Millisecond,
		Follow:            follow.Options{RequestTimeout: 300 * time.Millisecond, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond},
		Logger:            hclog.NewNullLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	appendEv := func(e *weftv1.Event) {
		t.Helper()
		if _, err := l.Append(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	appendEv(logtest.Config(cfg()))
	appendEv(logtest.Added("n2", "192.168.1.2", "10.244.2.0/24"))
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { a.Run(rctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	var lease, version int64
	waitReg := func(what string, cond func(*weftv1.Registration) bool) *weftv1.Registration {
		t.Helper()
		var reg *weftv1.Registration
		eventually(t, what, func() (bool, string) {
			r, err := c.Get(ctx, keys.New("").Registration("n1"))
			if err != nil || len(r.Kvs) == 0 {
				return false, "absent"
			}
			if lease != 0 && r.Kvs[0].Lease != lease {
				return false, "on another lease"
			}
			lease, version = r.Kvs[0].Lease, r.Kvs[0].Version
			reg, err = keys.DecodeRegistration(r.Kvs[0].Value)
			return err == nil && cond(reg), string(r.Kvs[0].Value)
		})
		return reg
	}

	// Before this node's NodeAdded nothing is synced and there is no
	// device, yet the registration carries the MAC the device will have:
	// the controller's one NodeAdded has it.
	mac := spec.VTEPMAC("n1").String()
	reg := waitReg("registration", func(*weftv1.Registration) bool { return true })
	// The datapath's capabilities, and spec.CapBigDecap: no override
	// keeps this agent's VXLAN out of its programs.
	if !slices.Equal(reg.Capabilities, []string{"tcx", "vxlan", "ipv6", spec.CapBigDecap}) || reg.VtepMac != mac || reg.UnderlayIp != "192.168.1.1" {
		t.Fatalf("first registration = %v, want vtep_mac %s", reg, mac)
	}

	// The first Sync creates the device with that MAC: the registration
	// is not written again (a rewrite would be a NodeUpdated per join).
	appendEv(logtest.Added("n1", "192.168.1.1", "10.244.1.0/24"))
	eventually(t, "status after the first sync", func() (bool, string) {
		st := a.Status()
		return st.TunnelEntries == 1, st.String()
	})
	eventually(t, "status written", func() (bool, string) {
		r, err := c.Get(ctx, keys.New("").Status("n1"))
		if err != nil || len(r.Kvs) == 0 {
			return false, "absent"
		}
		st, err := keys.DecodeStatus(r.Kvs[0].Value)
		return err == nil && st.TunnelEntries == 1, string(r.Kvs[0].Value)
	})
	reg = waitReg("registration after the first sync", func(*weftv1.Registration) bool { return true })
	if reg.VtepMac != mac || version != 1 {
		t.Fatalf("registration after sync = %v at version %d, want %s never rewritten", reg, version, mac)
	}

	// A device whose MAC is not the spec's (changed behind weft's back
	// and found by a repair) is what the registration follows.
	dp.setMAC("02:00:00:00:00:02")
	dp.Mutate(func(d *spec.Desired) { d.Tunnels = nil })
	waitReg("MAC after a repair", func(r *weftv1.Registration) bool { return r.VtepMac == "02:00:00:00:00:02" })
}

// TestEqualDesired: a spec differing in any field the datapath holds is a
// change the agent must sync (the underlay check's pod networks and owners
// included: a new node in gateway mode changes only its owner entry).
func TestEqualDesired(t *testing.T) {
	base := func() *spec.Desired {
		return (&spec.Desired{
			Mode:          spec.ModeGateway,
			LocalPodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")},
			PodNetworks:   []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
			PodOwners:     []spec.PodOwner{{Prefix: netip.MustParsePrefix("10.244.2.0/24"), Node: netip.MustParseAddr("192.168.1.2")}},
		}).Normalize()
	}
	if !equalDesired(base(), base()) {
		t.Fatal("equal specs compare unequal")
	}
	for name, mutate := range map[string]func(d *spec.Desired){
		"pod networks": func(d *spec.Desired) { d.PodNetworks = append(d.PodNetworks, netip.MustParsePrefix("fd00::/48")) },
		"pod owners": func(d *spec.Desired) {
			d.PodOwners = append(d.PodOwners, spec.PodOwner{Prefix: netip.MustParsePrefix("10.244.3.0/24"), Node: netip.MustParseAddr("192.168.1.3")})
		},
		"owner moved": func(d *spec.Desired) { d.PodOwners[0].Node = netip.MustParseAddr("192.168.1.9") },
		"local":       func(d *spec.Desired) { d.LocalPodCIDRs = nil },
	} {
		d := base()
		mutate(d)
		if equalDesired(base(), d) {
			t.Errorf("%s: a changed spec compares equal", name)
		}
	}
}

// TestRegistrationCarriesBigDecap: an agent whose in-program VXLAN is the
// cluster config's to decide registers spec.CapBigDecap in its first
// registration, which its first Sync does not rewrite (a join stays one
// event); one that overrides --tunnel-datapath=device or
// --host-routing=stack never registers it.
func TestRegistrationCarriesBigDecap(t *testing.T) {
	for _, tc := range []struct {
		tunnel, hostRouting string
		want                bool
	}{{"", "", true}, {"bpf", "", true}, {"device", "", false}, {"", "stack", false}} {
		t.Run(fmt.Sprintf("tunnel=%q,host=%q", tc.tunnel, tc.hostRouting), func(t *testing.T) {
			_, c := etcdtest.New(t)
			ctx := context.Background()
			l, err := logtest.New(ctx, c, "/weft")
			if err != nil {
				t.Fatal(err)
			}
			dp := &infoDP{Datapath: fakedp.New(testUnderlay())}
			a, err := New(Config{
				Client:            c,
				NodeName:          "n1",
				Datapath:          dp,
				TunnelDatapath:    tc.tunnel,
				HostRouting:       tc.hostRouting,
				LeaseTTL:          2 * time.Second,
				ReconcileInterval: 50 * time.Millisecond,
				StatusMinInterval: 10 * time.Millisecond,
				Follow:            follow.Options{RequestTimeout: 300 * time.Millisecond, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond},
				Logger:            hclog.NewNullLogger(),
			})
			if err != nil {
				t.Fatal(err)
			}
			appendEv := func(e *weftv1.Event) {
				t.Helper()
				if _, err := l.Append(ctx, e); err != nil {
					t.Fatal(err)
				}
			}
			bpfCfg := cfg()
			bpfCfg.TunnelDatapath = "bpf"
			appendEv(logtest.Config(bpfCfg))
			appendEv(logtest.Added("n2", "192.168.1.2", "10.244.2.0/24"))
			rctx, cancel := context.WithCancel(ctx)
			done := make(chan struct{})
			go func() { a.Run(rctx); close(done) }()
			t.Cleanup(func() { cancel(); <-done })

			want := []string{"tcx", "vxlan", "ipv6"}
			if tc.want {
				want = append(want, spec.CapBigDecap)
			}
			var version int64
			reg := func() (bool, string) {
				r, err := c.Get(ctx, keys.New("").Registration("n1"))
				if err != nil || len(r.Kvs) == 0 {
					return false, "absent"
				}
				version = r.Kvs[0].Version
				reg, err := keys.DecodeRegistration(r.Kvs[0].Value)
				return err == nil && slices.Equal(reg.Capabilities, want), string(r.Kvs[0].Value)
			}
			eventually(t, "first registration", reg)
			appendEv(logtest.Added("n1", "192.168.1.1", "10.244.1.0/24"))
			eventually(t, "first sync", func() (bool, string) {
				k := dp.Kernel()
				return k != nil && k.Overlay != nil, fmt.Sprint(k)
			})
			eventually(t, "registration after the first sync", reg)
			if version != 1 {
				t.Errorf("registration at version %d after the first sync: want it written once", version)
			}
		})
	}
}
