package netnstest

import (
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestParseICMP(t *testing.T) {
	snmp := "Ip: Forwarding DefaultTTL\nIp: 1 64\n" +
		"Icmp: InMsgs InErrors InEchos OutMsgs OutErrors OutEchoReps\nIcmp: 9 0 7 6 2 5\n" +
		"IcmpMsg: InType0 OutType8\nIcmpMsg: 1 2\n"
	got, err := parseICMP(snmp)
	if err != nil {
		t.Fatal(err)
	}
	if want := (ICMP{InEchos: 7, OutEchoReps: 5, OutErrors: 2}); got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for _, bad := range []string{"", "Icmp: InEchos OutErrors\nIcmp: 1 2\n", "Icmp: InEchos OutEchoReps OutErrors\nIcmp: 1 x 2\n"} {
		if _, err := parseICMP(bad); err == nil {
			t.Errorf("parsed %q", bad)
		}
	}
	// Another section's field, the router check's ForwDatagrams.
	if v, err := SNMP("Ip: Forwarding ForwDatagrams DefaultTTL\nIp: 1 42 64\nIcmp: InMsgs\nIcmp: 9\n", "Ip", "ForwDatagrams"); err != nil || v != 42 {
		t.Errorf("Ip ForwDatagrams: %d, %v; want 42", v, err)
	}
	if _, err := SNMP("Ip: Forwarding\nIp: 1\n", "Ip", "ForwDatagrams"); err == nil {
		t.Error("found a missing ForwDatagrams")
	}
}

// TestICMPCounters pings d from c and reads d's statistics: every request
// counted received and answered, none unsent (read in d, not in the
// namespace of the process's main thread).
func TestICMPCounters(t *testing.T) {
	RequireRoot(t)
	prefix := Prefix()
	c, d := New(t, prefix+"-c"), New(t, prefix+"-d")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(c.Veth("vc", d, "vd"))
	must(c.Addr("vc", netip.MustParsePrefix("10.66.0.1/24")))
	must(d.Addr("vd", netip.MustParsePrefix("10.66.0.2/24")))
	must(c.Up("vc"))
	must(d.Up("vd"))
	dAddr := netip.MustParseAddr("10.66.0.2")
	if !Reach(t, c, dAddr, 3*time.Second) {
		t.Fatal("c does not reach d")
	}
	p, err := NewPinger(c, false)
	must(err)
	defer p.Close()
	before, err := d.ICMP()
	must(err)
	const pings = 20
	for seq := 1; seq <= pings; seq++ {
		must(p.Ping(dAddr, seq, 3*time.Second))
	}
	after, err := d.ICMP()
	must(err)
	got := ICMP{InEchos: after.InEchos - before.InEchos, OutEchoReps: after.OutEchoReps - before.OutEchoReps, OutErrors: after.OutErrors - before.OutErrors}
	if want := (ICMP{InEchos: pings, OutEchoReps: pings}); got != want {
		t.Fatalf("d's statistics moved by %+v, want %+v", got, want)
	}
}

// TestICMPRepliesShareOneBuffer shows, with no weft anywhere, what made
// TestChaos lose pings between every pair of pods for a moment after a
// node rejoined: the kernel sends every namespace's echo replies through
// one ICMP socket per CPU, whose send buffer holds them until they leave.
// Namespace a answers b's flood of echo requests through a gateway that
// never answers ARP, so its replies wait in the neighbour's queue (up to
// 3 s) and fill that buffer; meanwhile c's pings to d, a pair that shares
// nothing with a and b but the kernel, go unanswered. d received every
// request; its ICMP OutErrors counts each reply it could not send, which
// is how the chaos checker tells these pings from pings a datapath lost.
//
// While it runs, no namespace on the machine gets an echo reply out on
// CPU 0 (about a second): it runs only when WEFT_TEST_SHARED_ICMP=1,
// with no other test on the machine pinging.
func TestICMPRepliesShareOneBuffer(t *testing.T) {
	RequireRoot(t)
	if os.Getenv("WEFT_TEST_SHARED_ICMP") != "1" {
		t.Skip("starves every namespace's echo replies on CPU 0 for about a second; WEFT_TEST_SHARED_ICMP=1 runs it")
	}
	prefix := Prefix()
	a, b, c, d := New(t, prefix+"-a"), New(t, prefix+"-b"), New(t, prefix+"-c"), New(t, prefix+"-d")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(a.Veth("va", b, "vb"))
	must(a.Addr("va", netip.MustParsePrefix("10.77.0.2/24")))
	must(b.Addr("vb", netip.MustParsePrefix("10.88.0.1/32")))
	must(a.Up("va"))
	must(b.Up("vb"))
	// a answers b through 10.77.0.99, which nobody holds.
	must(a.Route("va", netip.MustParsePrefix("10.88.0.0/24"), netip.MustParseAddr("10.77.0.99")))
	bh, err := b.NL()
	must(err)
	vb, err := bh.LinkByName("vb")
	must(err)
	must(bh.RouteAdd(&netlink.Route{LinkIndex: vb.Attrs().Index, Dst: IPNet(netip.MustParsePrefix("10.77.0.0/24")), Scope: netlink.SCOPE_LINK}))
	must(c.Veth("vc", d, "vd"))
	must(c.Addr("vc", netip.MustParsePrefix("10.66.0.1/24")))
	must(d.Addr("vd", netip.MustParsePrefix("10.66.0.2/24")))
	must(c.Up("vc"))
	must(d.Up("vd"))
	dAddr, aAddr := netip.MustParseAddr("10.66.0.2"), netip.MustParseAddr("10.77.0.2")
	if !Reach(t, c, dAddr, 3*time.Second) {
		t.Fatal("c does not reach d")
	}
	flood, err := NewPinger(b, false)
	must(err)
	defer flood.Close()
	p, err := NewPinger(c, false)
	must(err)
	defer p.Close()
	before, err := d.ICMP()
	must(err)

	// Every request is sent from one thread on CPU 0, so both pairs'
	// replies are built on CPU 0 (the softirq runs where the request was
	// queued) and go through its ICMP socket. The thread is never
	// unlocked: it ends with the goroutine and takes its affinity along.
	const pings = 100
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		var cpu0 unix.CPUSet
		cpu0.Set(0)
		if err := unix.SchedSetaffinity(0, &cpu0); err != nil {
			errc <- err
			return
		}
		for i := 0; i < pings*5; i++ {
			for k := 0; k < 2; k++ {
				if err := flood.Send(aAddr, (i*2+k)%0xffff+1); err != nil {
					errc <- err
					return
				}
			}
			if i%5 == 0 {
				if err := p.Send(dAddr, i/5+1); err != nil {
					errc <- err
					return
				}
			}
			time.Sleep(time.Millisecond)
		}
		errc <- nil
	}()
	must(<-errc)
	time.Sleep(200 * time.Millisecond)
	// Deleting a's end frees its queued replies at once, rather than
	// when the neighbour fails up to three seconds later.
	ah, err := a.NL()
	must(err)
	va, err := ah.LinkByName("va")
	must(err)
	must(ah.LinkDel(va))
	lost := 0
	for seq := 1; seq <= pings; seq++ {
		if _, ok := p.Reply(seq); !ok {
			lost++
		}
	}
	after, err := d.ICMP()
	must(err)
	in, unsent, sent := after.InEchos-before.InEchos, after.OutErrors-before.OutErrors, after.OutEchoReps-before.OutEchoReps
	t.Logf("c→d: %d of %d pings lost; d received %d requests, sent %d replies, could not send %d", lost, pings, in, sent, unsent)
	if in != pings {
		t.Fatalf("d received %d of %d requests", in, pings)
	}
	if lost == 0 || unsent == 0 {
		t.Fatalf("c lost %d pings and d could not send %d replies: a's stuck replies no longer starve d's (the kernel changed?)", lost, unsent)
	}
	if uint64(lost) != unsent || sent+unsent != in {
		t.Fatalf("c lost %d pings, d could not send %d replies and sent %d of %d", lost, unsent, sent, in)
	}
}
