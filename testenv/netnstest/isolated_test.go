package netnstest

import (
	"io"
	"net"
	"os"
	"strconv"
	"testing"
	"time"
)

// TestIsolatedDropTCP: the child is in a namespace of its own; a drop
// lets nothing through to the port and counts the tries, and once lifted
// the bytes sent meanwhile arrive on the same connection (TCP
// retransmitted them: nothing was refused).
func TestIsolatedDropTCP(t *testing.T) {
	if !Isolated(t) {
		return
	}
	self, _ := os.Readlink("/proc/self/ns/net")
	if self == os.Getenv(hostNSEnv) || self == "" {
		t.Fatalf("the child is in its parent's namespace %s", self)
	}
	for _, where := range []Where{OnTheWay, AtSender} {
		l, err := net.Listen("tcp", "127.0.0.2:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		port := l.Addr().(*net.TCPAddr).Port
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		s, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()

		d := DropTCP(t, "127.0.0.2", port, where)
		if _, err := c.Write([]byte("lost?")); err != nil {
			t.Fatal(err)
		}
		s.SetReadDeadline(time.Now().Add(time.Second))
		if n, err := s.Read(make([]byte, 8)); err == nil {
			t.Fatalf("where %d: %d bytes went through the drop", where, n)
		}
		if _, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.2", strconv.Itoa(port)), 500*time.Millisecond); err == nil {
			t.Fatalf("where %d: connected through the drop", where)
		}
		tries := d.LiftAfterNextTry(10 * time.Second)
		if tries < 2 {
			t.Fatalf("where %d: %d tries counted, want the write, a SYN and one more", where, tries)
		}
		s.SetReadDeadline(time.Now().Add(10 * time.Second))
		got := make([]byte, 5)
		if _, err := io.ReadFull(s, got); err != nil || string(got) != "lost?" {
			t.Fatalf("where %d: after the lift read %q, %v", where, got, err)
		}
	}
}
