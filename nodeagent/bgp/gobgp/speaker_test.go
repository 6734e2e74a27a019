package gobgp

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
	"go.uber.org/goleak"

	"github.com/weftnet/weft/nodeagent/bgp"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		helperMain(mode)
		os.Exit(0)
	}
	goleak.VerifyTestMain(m,
		// GoBGP's Serve loop has no exit; one goroutine stays per server
		// ever started (see docs/bgp.md).
		goleak.IgnoreTopFunction("github.com/osrg/gobgp/v3/pkg/server.(*BgpServer).Serve"),
		goleak.IgnoreAnyFunction("github.com/osrg/gobgp/v3/pkg/server.(*BgpServer).Serve"),
	)
}

func TestApplyRejectsUnusableConfig(t *testing.T) {
	sp := New(nil)
	ctx := context.Background()
	for name, tc := range map[string]struct {
		cfg bgp.Config
		adv []netip.Prefix
		nh  []netip.Addr
	}{
		"no router id":    {cfg: bgp.Config{ASN: 64512}},
		"v6 router id":    {cfg: bgp.Config{RouterID: ip("fd00::1"), ASN: 64512}},
		"no asn":          {cfg: bgp.Config{RouterID: ip("127.0.0.1")}},
		"bad port":        {cfg: bgp.Config{RouterID: ip("127.0.0.1"), ASN: 1, ListenPort: 70000}},
		"v6 prefix v4 nh": {cfg: bgp.Config{RouterID: ip("127.0.0.1"), ASN: 1, ListenPort: -1}, adv: []netip.Prefix{pfx("fd00:1::/64")}, nh: []netip.Addr{ip("127.0.0.1")}},
		"no next hop":     {cfg: bgp.Config{RouterID: ip("127.0.0.1"), ASN: 1, ListenPort: -1}, adv: []netip.Prefix{pfx("10.244.0.0/24")}},
	} {
		if err := sp.Apply(ctx, tc.cfg, tc.adv, tc.nh); !errors.Is(err, bgp.ErrInvalidConfig) {
			t.Errorf("%s: Apply = %v, want bgp.ErrInvalidConfig", name, err)
		}
	}
	if sp.Routes() != nil || sp.Sessions() != nil {
		t.Error("a refused Apply started the speaker")
	}
}

func TestPeerKeyDefaults(t *testing.T) {
	cfg := &bgp.Config{RouterID: ip("10.0.0.1"), ASN: 64512, GracefulRestart: true}
	k := peerKeyOf(cfg, &bgp.Peer{Address: ip("10.0.0.2")})
	if k.asn != 64512 || k.hold != bgp.DefaultHoldTime || k.keepalive != bgp.DefaultKeepalive || k.restart != bgp.DefaultRestartTime {
		t.Errorf("defaults not applied: %+v", k)
	}
	cfg.HoldTime, cfg.Keepalive = 30, 10
	k = peerKeyOf(cfg, &bgp.Peer{Address: ip("10.0.0.2"), ASN: 65000, HoldTime: 3, MultihopTTL: 4})
	if k.asn != 65000 || k.hold != 3 || k.keepalive != 10 || k.ttl != 4 {
		t.Errorf("peer settings not used: %+v", k)
	}
	p := k.apiPeer()
	if !p.EbgpMultihop.Enabled || p.EbgpMultihop.MultihopTtl != 4 || !p.GracefulRestart.Enabled ||
		p.Timers.Config.HoldTime != 3 || len(p.AfiSafis) != 2 || !p.AfiSafis[0].MpGracefulRestart.Config.Enabled {
		t.Errorf("api peer does not carry the settings: %v", p)
	}
}

// TestLogScrubsPasswordAndRecordsReasons drives the log adapter the way
// GoBGP calls it.
func TestLogScrubsPasswordAndRecordsReasons(t *testing.T) {
	var buf bytes.Buffer
	changes := 0
	r := newReasons(func() { changes++ })
	r.secret("s3cr3t-md5")
	l := &logAdapter{log: hclog.New(&hclog.LoggerOptions{Output: &buf, Level: hclog.Trace}), reasons: r}
	l.Warn("sent notification", gobgplog.Fields{"Topic": "Peer", "Key": "10.0.0.2", "Data": "bad peer AS, key s3cr3t-md5"})
	l.Debug("failed to connect", gobgplog.Fields{"Topic": "Peer", "Key": "10.0.0.3", "Error": errors.New("dial tcp 10.0.0.3:179: connect: connection refused")})
	l.Warn("received notification", gobgplog.Fields{"Topic": "Peer", "Key": "10.0.0.4", "Code": uint8(2), "Subcode": uint8(2)})
	l.Debug("failed to connect", gobgplog.Fields{"Topic": "Peer", "Key": "10.0.0.3", "Error": errors.New("dial tcp 10.0.0.3:179: connect: connection refused")})
	if strings.Contains(buf.String(), "s3cr3t-md5") {
		t.Errorf("password logged: %s", buf.String())
	}
	if got := r.get("10.0.0.2"); got != "sent notification: bad peer AS, key <redacted>" {
		t.Errorf("reason 10.0.0.2 = %q", got)
	}
	if got := r.get("10.0.0.3"); !strings.Contains(got, "connection refused") {
		t.Errorf("reason 10.0.0.3 = %q", got)
	}
	if got := r.get("10.0.0.4"); !strings.Contains(got, "received notification") || !strings.Contains(strings.ToLower(got), "bad peer as") {
		t.Errorf("reason 10.0.0.4 = %q", got)
	}
	if changes != 3 {
		t.Errorf("%d change signals, want 3 (a repeated reason is not a change)", changes)
	}
}

// TestSpeakerInProcess runs a real GoBGP server in the test process,
// listening nowhere, with a peer on loopback where nothing listens: the
// session shows the connect error, Apply is idempotent, Stop leaks nothing
// but GoBGP's Serve loop.
func TestSpeakerInProcess(t *testing.T) {
	sp := New(hclog.NewNullLogger())
	ctx := context.Background()
	cfg := bgp.Config{
		RouterID: ip("127.0.0.1"), ASN: 64512, ListenPort: -1, LocalAddress: ip("127.0.0.1"),
		Peers: []bgp.Peer{{Address: ip("127.0.0.2")}, {Address: ip("127.0.0.1")}},
	}
	adv := []netip.Prefix{pfx("10.244.1.0/24")}
	for range 2 {
		if err := sp.Apply(ctx, cfg, adv, []netip.Addr{ip("127.0.0.1")}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		ss := sp.Sessions()
		if len(ss) != 1 || ss[0].Peer != "127.0.0.2" {
			t.Fatalf("sessions = %v, want only 127.0.0.2 (own address skipped)", ss)
		}
		if strings.Contains(ss[0].Reason, "connection refused") {
			if ss[0].State == "established" {
				t.Fatalf("session %v established with nobody", ss[0])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connect error in reason: %v", ss[0])
		}
		select {
		case <-sp.Changed():
		case <-time.After(time.Second):
		}
	}
	if r := sp.Routes(); len(r) != 0 {
		t.Errorf("routes %v without any session (own prefix must not be listed)", r)
	}
	if err := sp.Stop(ctx, true); err != nil {
		t.Fatal(err)
	}
	if err := sp.Stop(ctx, true); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if sp.Sessions() != nil {
		t.Error("sessions after Stop")
	}
}
