package keys

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

func randomNode(r *rand.Rand) *weftv1.Node {
	n := &weftv1.Node{
		Name:       fmt.Sprintf("node-%d", r.IntN(100000)),
		UnderlayIp: fmt.Sprintf("10.%d.%d.%d", r.IntN(256), r.IntN(256), r.IntN(256)),
		Seq:        r.Uint64N(math.MaxUint64),
	}
	for range r.IntN(3) {
		n.PodCidrs = append(n.PodCidrs, fmt.Sprintf("10.%d.%d.0/24", r.IntN(256), r.IntN(256)))
	}
	if r.IntN(2) == 0 {
		n.VtepMac = "02:00:00:00:00:01"
		n.Capabilities = []string{"tcx", "vxlan", "ipv6"}
	}
	if r.IntN(3) == 0 {
		n.Asn = r.Uint32()
	}
	return n
}

// TestFastNodeTakesWhatWeftWrites: every value Encode writes takes the
// fast path and decodes to the node written.
func TestFastNodeTakesWhatWeftWrites(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		n := randomNode(r)
		got, ok := fastNode(Encode(n))
		if !ok || !proto.Equal(got, n) {
			t.Fatalf("fast path on %s: %v, %v", Encode(n), got, ok)
		}
	}
}

// fastNodeSeeds are values the fast path must leave to protojson (or,
// for the valid ones, read exactly as protojson does).
var fastNodeSeeds = []string{
	`{}`, ` { } `, `{"name":"a"}`, "{\n \"name\" : \"a\" ,\t\"seq\":\"7\"}\n",
	`{"name":"a","name":"b"}`, `{"name":"a",}`, `{"name":"a"} x`, `{"name":"a"`,
	`{"underlayIp":"10.0.0.1"}`, `{"podCidrs":["10.0.0.0/24"]}`, `{"extra":1,"name":"a"}`,
	`{"name":"a\u0062"}`, `{"name":"\\"}`, `{"name":null}`, `{"pod_cidrs":null}`,
	`{"pod_cidrs":[]}`, `{"pod_cidrs":["a",]}`, `{"pod_cidrs":["a" "b"]}`, `{"capabilities":["tcx","vxlan"]}`,
	`{"seq":"18446744073709551615"}`, `{"seq":"18446744073709551616"}`, `{"seq":"07"}`, `{"seq":7}`,
	`{"seq":" 7"}`, `{"seq":"7 "}`, `{"seq":"-7"}`, `{"seq":"7.0"}`, `{"seq":"1e3"}`,
	`{"asn":4294967295}`, `{"asn":4294967296}`, `{"asn":"5"}`, `{"asn":05}`, `{"asn":5.5}`, `{"asn":-1}`,
	`{"vtep_mac":"02:00:00:00:00:01","asn":0}`, "{\"name\":\"\xff\"}", `{"name":"é"}`, `[]`, `"x"`, ``,
}

// FuzzFastNode: whatever the fast path accepts, protojson decodes to the
// same node; DecodeNode therefore answers exactly as protojson does.
func FuzzFastNode(f *testing.F) {
	for _, s := range fastNodeSeeds {
		f.Add([]byte(s))
	}
	r := rand.New(rand.NewPCG(3, 4))
	for range 20 {
		f.Add(Encode(randomNode(r)))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		want := &weftv1.Node{}
		werr := protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(b, want)
		got, ok := fastNode(b)
		if ok && (werr != nil || !proto.Equal(got, want)) {
			t.Fatalf("fast path read %q as %v; protojson: %v, %v", b, got, want, werr)
		}
		n, err := DecodeNode(b)
		if (err == nil) != (werr == nil) || err == nil && !proto.Equal(n, want) {
			t.Fatalf("DecodeNode(%q) = %v, %v; protojson: %v, %v", b, n, err, want, werr)
		}
	})
}

func BenchmarkDecodeNode(b *testing.B) {
	v := Encode(&weftv1.Node{Name: "node-04999", UnderlayIp: "10.0.19.136", PodCidrs: []string{"172.16.78.0/26"},
		VtepMac: "02:00:00:00:00:01", Capabilities: []string{"tcx", "vxlan", "ipv6"}, Seq: 5000})
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := fastNode(v); !ok {
				b.Fatal("not fast")
			}
		}
	})
	b.Run("protojson", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := decode("node", v, &weftv1.Node{}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
