package netnstest

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// TestFrames sends hand-written frames across a veth: the receiving kernel
// checks every checksum and the neighbour messages' form, so a datagram
// that arrives and a neighbour entry that moves prove the frames right.
func TestFrames(t *testing.T) {
	RequireRoot(t)
	prefix := Prefix()
	a, b := New(t, prefix+"-a"), New(t, prefix+"-b")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(a.Veth("v0", b, "v1"))
	must(a.Addr("v0", netip.MustParsePrefix("10.124.0.1/24"), netip.MustParsePrefix("fd00:124::1/64")))
	must(b.Addr("v1", netip.MustParsePrefix("10.124.0.2/24"), netip.MustParsePrefix("fd00:124::2/64")))
	must(a.Up("v0"))
	must(b.Up("v1"))
	macA, err := a.MAC("v0")
	must(err)
	macB, err := b.MAC("v1")
	must(err)
	sink, err := NewUDPSink(b, 0)
	must(err)
	defer sink.Close()
	for _, c := range []struct{ src, dst string }{{"10.124.0.99", "10.124.0.2"}, {"fd00:124::99", "fd00:124::2"}} {
		src := netip.MustParseAddr(c.src)
		f := UDP{DstMAC: macB, SrcMAC: macA, Src: src, Dst: netip.MustParseAddr(c.dst), SrcPort: 7, DstPort: sink.Port(), Payload: []byte("frame " + c.src)}
		// Sent again until it arrives: a link just up may still drop
		// the first IPv6 packets.
		var got netip.Addr
		ok := false
		for end := time.Now().Add(3 * time.Second); !ok && time.Now().Before(end); {
			must(a.SendFrame("v0", f.Frame()))
			got, ok = sink.Wait("frame "+c.src, 100*time.Millisecond)
		}
		if !ok || got != src {
			t.Fatalf("UDP frame from %s: arrived %v from %s", src, ok, got)
		}
	}
	// Neighbour entries of b for two addresses on a's side, then an ARP
	// reply and a neighbour advertisement that move them to other MACs.
	stale := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x11}
	moved := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x22}
	v4, v6 := netip.MustParseAddr("10.124.0.7"), netip.MustParseAddr("fd00:124::7")
	b.MustDo(t, func() error {
		l, err := netlink.LinkByName("v1")
		if err != nil {
			return err
		}
		for _, ip := range []netip.Addr{v4, v6} {
			fam := netlink.FAMILY_V4
			if ip.Is6() {
				fam = netlink.FAMILY_V6
			}
			if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: fam, State: netlink.NUD_STALE, IP: ip.AsSlice(), HardwareAddr: stale}); err != nil {
				return err
			}
		}
		return nil
	})
	time.Sleep(1100 * time.Millisecond) // past the entries' locktime
	must(a.SendFrame("v0", ARP{DstMAC: macB, SrcMAC: macA, SenderMAC: moved, SenderIP: v4, TargetMAC: macB,
		TargetIP: netip.MustParseAddr("10.124.0.2"), Reply: true}.Frame()))
	must(a.SendFrame("v0", NeighborAdvert{DstMAC: macB, SrcMAC: moved, Src: v6, Dst: netip.MustParseAddr("fd00:124::2"), Target: v6}.Frame()))
	deadline := time.Now().Add(2 * time.Second)
	for {
		got := map[string]string{}
		b.MustDo(t, func() error {
			l, err := netlink.LinkByName("v1")
			if err != nil {
				return err
			}
			ns, err := netlink.NeighList(l.Attrs().Index, netlink.FAMILY_ALL)
			for _, n := range ns {
				got[n.IP.String()] = n.HardwareAddr.String()
			}
			return err
		})
		if got[v4.String()] == moved.String() && got[v6.String()] == moved.String() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("neighbour entries after ARP reply and advertisement: %v, want both at %s", got, moved)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
