package keys

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

func TestLayout(t *testing.T) {
	for _, prefix := range []string{"", "/weft", "weft", "/weft/"} {
		l := New(prefix)
		if got := l.Config(); got != "/weft/config" {
			t.Errorf("New(%q).Config() = %q", prefix, got)
		}
	}
	l := New("/c1")
	cases := map[string]string{
		l.Config():        "/c1/config",
		l.DesiredConfig(): "/c1/desired/config",
		l.DesiredStatus(): "/c1/desired/status",
		l.Head():          "/c1/head",
		l.Event(42):       "/c1/events/00000000000000000042",
		l.Node("n1"):      "/c1/nodes/n1",
		l.Subnet(netip.MustParsePrefix("10.244.3.0/24")): "/c1/subnets/10.244.3.0-24",
		l.Subnet(netip.MustParsePrefix("fd00:1::/64")):   "/c1/subnets/fd00:1::-64",
		l.Registration("n1"):                             "/c1/registrations/n1",
		l.Status("n1"):                                   "/c1/status/n1",
		l.Problem("n1"):                                  "/c1/problems/n1",
		l.Election():                                     "/c1/election",
	}
	for got, want := range cases {
		if got != want {
			t.Errorf("key %q, want %q", got, want)
		}
	}
	// Event keys sort in seq order.
	if !(l.Event(9) < l.Event(10) && l.Event(99) < l.Event(100)) {
		t.Error("event keys do not sort by seq")
	}
}

func TestEventSeqRoundTrip(t *testing.T) {
	l := New("/weft")
	for _, seq := range []uint64{1, 9, 10, 12345, 1<<64 - 1} {
		got, err := l.EventSeq(l.Event(seq))
		if err != nil || got != seq {
			t.Errorf("EventSeq(Event(%d)) = %d, %v", seq, got, err)
		}
	}
	for _, bad := range []string{"/weft/events/", "/weft/events/12", "/weft/nodes/00000000000000000001", "/weft/events/0000000000000000000x"} {
		if _, err := l.EventSeq(bad); !errors.Is(err, ErrBadKey) {
			t.Errorf("EventSeq(%q) err = %v, want ErrBadKey", bad, err)
		}
	}
}

func TestSubnetNameRoundTrip(t *testing.T) {
	for _, s := range []string{"10.244.0.0/24", "10.0.0.0/8", "fd00:10:244::/64", "::/0"} {
		p := netip.MustParsePrefix(s)
		got, err := ParseSubnetName(SubnetName(p))
		if err != nil || got != p {
			t.Errorf("ParseSubnetName(SubnetName(%s)) = %s, %v", p, got, err)
		}
	}
	for _, bad := range []string{"", "10.0.0.0", "10.0.0.0-33", "x-24"} {
		if _, err := ParseSubnetName(bad); !errors.Is(err, ErrBadKey) {
			t.Errorf("ParseSubnetName(%q) err = %v, want ErrBadKey", bad, err)
		}
	}
}

func TestNameOf(t *testing.T) {
	l := New("")
	if n, err := NameOf(l.Nodes(), l.Node("a.b-c")); err != nil || n != "a.b-c" {
		t.Errorf("NameOf = %q, %v", n, err)
	}
	for _, bad := range []string{"/weft/nodes/", "/weft/nodes/a/b", "/other/a"} {
		if _, err := NameOf(l.Nodes(), bad); err == nil {
			t.Errorf("NameOf(%q) accepted", bad)
		}
	}
}

func TestValidName(t *testing.T) {
	for _, ok := range []string{"node-1", "n1.example.org", "A_b"} {
		if err := ValidName(ok); err != nil {
			t.Errorf("ValidName(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a/b", "a b", strings.Repeat("x", 254), "é"} {
		if err := ValidName(bad); err == nil {
			t.Errorf("ValidName(%q) accepted", bad)
		}
	}
}

func TestHead(t *testing.T) {
	if s, err := ParseHead(nil); err != nil || s != 0 {
		t.Errorf("ParseHead(nil) = %d, %v", s, err)
	}
	if s, err := ParseHead([]byte(FormatHead(77))); err != nil || s != 77 {
		t.Errorf("ParseHead(77) = %d, %v", s, err)
	}
	if _, err := ParseHead([]byte("-1")); err == nil {
		t.Error("ParseHead(-1) accepted")
	}
}

func TestCodecRoundTripAndReadable(t *testing.T) {
	e := &weftv1.Event{Seq: 3, Time: "2026-11-30T10:00:00Z", Kind: &weftv1.Event_NodeAdded{NodeAdded: &weftv1.NodeAdded{
		Node: &weftv1.Node{Name: "n1", UnderlayIp: "10.0.0.1", PodCidrs: []string{"10.244.1.0/24"}},
	}}}
	b := Encode(e)
	// etcdctl shows the proto field names, so operators can match them to
	// the .proto files.
	for _, want := range []string{`"node_added"`, `"underlay_ip":"10.0.0.1"`, `"pod_cidrs":["10.244.1.0/24"]`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("encoded event %s lacks %s", b, want)
		}
	}
	got, err := DecodeEvent(b)
	if err != nil || !proto.Equal(got, e) {
		t.Fatalf("DecodeEvent round trip = %v, %v", got, err)
	}
	// Unknown fields from a newer writer are ignored, not fatal.
	if _, err := DecodeNode([]byte(`{"name":"n1","future_field":1}`)); err != nil {
		t.Errorf("DecodeNode with an unknown field: %v", err)
	}
	// Garbage is an error, not a panic.
	if _, err := DecodeConfig([]byte(`{"cluster_cidr":`)); err == nil {
		t.Error("DecodeConfig accepted truncated JSON")
	}
}

// Fuzz targets for every decoder of data read from etcd. Plain `go test`
// runs their seed corpora; `go test -fuzz FuzzDecode` explores further.

func FuzzDecodeEvent(f *testing.F) {
	f.Add(Encode(&weftv1.Event{Seq: 1, Kind: &weftv1.Event_NodeRemoved{NodeRemoved: &weftv1.NodeRemoved{Name: "n"}}}))
	f.Add([]byte(`{"seq":"18446744073709551615","config_changed":{"config":{"cluster_cidr":"10.0.0.0/8"}}}`))
	f.Add([]byte(`{"seq":-1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := DecodeEvent(b)
		if err != nil {
			return
		}
		// Whatever decodes re-encodes and decodes to the same message.
		e2, err := DecodeEvent(Encode(e))
		if err != nil || !proto.Equal(e, e2) {
			t.Fatalf("re-decode of %q: %v", b, err)
		}
	})
}

func FuzzDecodeValues(f *testing.F) {
	f.Add([]byte(`{"name":"n1","underlay_ip":"10.0.0.1","pod_cidrs":["10.244.0.0/24"]}`))
	f.Add([]byte(`{"cluster_cidr":"10.244.0.0/16","backend":"vxlan","vni":1}`))
	f.Add([]byte(`{"name":"n1","applied_seq":"7","refused":["x"]}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		// None of these may panic, whatever an operator wrote.
		DecodeNode(b)
		DecodeConfig(b)
		DecodeRegistration(b)
		DecodeStatus(b)
		DecodeConfigStatus(b)
		DecodeProblem(b)
	})
}

func FuzzParseKeys(f *testing.F) {
	l := New("/weft")
	f.Add(l.Event(17), "10.244.0.0-24", "12")
	f.Add("/weft/events/x", "fd00::-64", "")
	f.Fuzz(func(t *testing.T, eventKey, subnet, head string) {
		if seq, err := l.EventSeq(eventKey); err == nil && l.Event(seq) != eventKey {
			t.Fatalf("EventSeq(%q) = %d, which renders as %q", eventKey, seq, l.Event(seq))
		}
		if p, err := ParseSubnetName(subnet); err == nil {
			if _, err := ParseSubnetName(SubnetName(p)); err != nil {
				t.Fatalf("subnet %q parsed to %s, which does not round-trip: %v", subnet, p, err)
			}
		}
		ParseHead([]byte(head))
	})
}

func TestValidPrefix(t *testing.T) {
	for _, ok := range []string{"/weft", "weft", "/weft/", "/a/b-c.d_e", "/Weft2"} {
		if err := ValidPrefix(ok); err != nil {
			t.Errorf("ValidPrefix(%q) = %v", ok, err)
		}
	}
	for bad, want := range map[string]string{
		"":                             "names no key prefix",
		"/":                            "names no key prefix",
		"//":                           "names no key prefix",
		"/a//b":                        "empty",
		"/a/../b":                      `".."`,
		"/a b":                         "contains ' '",
		"/a\nb":                        `contains '\n'`,
		"/" + strings.Repeat("a", 128): "longer than 128",
	} {
		if err := ValidPrefix(bad); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ValidPrefix(%q) = %v, want an error with %q", bad, err, want)
		}
	}
}
