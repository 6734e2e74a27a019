package netnstest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// isolatedEnv names the test an Isolated child runs; hostNSEnv carries
// the parent's network namespace (its /proc/self/ns/net link), so
// DropTCP can tell that it is not there.
const (
	isolatedEnv = "WEFT_NETNSTEST_ISOLATED"
	hostNSEnv   = "WEFT_NETNSTEST_PARENT_NS"
)

// Isolated runs the top-level test t again in a child process of the test
// binary that has a network namespace of its own: made for the child when
// it starts (clone with CLONE_NEWNET), holding nothing but its loopback
// (up), and gone when the child exits, also when it dies. Everything the
// test opens or dials (an embedded etcd, its clients) is then in that
// namespace, and what the test does to the network there (DropTCP)
// touches nothing else, for any thread of the process.
//
// In the child Isolated returns true and the test goes on. In the calling
// process it waits for the child, copies its output into t's log, fails t
// when the child failed (skips it when the child skipped) and returns
// false: the caller returns. Needs root (it skips t otherwise).
func Isolated(t *testing.T) bool {
	t.Helper()
	if os.Getenv(isolatedEnv) == t.Name() {
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err != nil {
			t.Fatalf("isolated: loopback up: %v", err)
		}
		return true
	}
	if strings.Contains(t.Name(), "/") {
		t.Fatalf("isolated: %s is a subtest; only a top-level test runs in a child", t.Name())
	}
	RequireRoot(t)
	host, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatalf("isolated: %v", err)
	}
	args := []string{"-test.run=^" + regexp.QuoteMeta(t.Name()) + "$", "-test.count=1", "-test.v"}
	if d, ok := t.Deadline(); ok {
		args = append(args, "-test.timeout="+time.Until(d).Round(time.Second).String())
	}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), isolatedEnv+"="+t.Name(), hostNSEnv+"="+host)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	t.Logf("in a network namespace of its own (pid %d):\n%s", cmd.Process.Pid, out.String())
	var exit *exec.ExitError
	switch {
	case err != nil && !errors.As(err, &exit):
		t.Fatalf("isolated: run %s: %v", t.Name(), err)
	case err != nil:
		t.Fatalf("isolated: %s failed in its namespace (%v)", t.Name(), err)
	case strings.Contains(out.String(), "--- SKIP: "+t.Name()):
		t.Skip("skipped in its namespace")
	case !strings.Contains(out.String(), "--- PASS: "+t.Name()):
		t.Fatalf("isolated: %s did not run in its namespace", t.Name())
	}
	return false
}

// Drop is a DropTCP rule in force.
type Drop struct {
	t      testing.TB
	what   string
	lifted bool
}

// Where a DropTCP rule drops.
type Where int

const (
	// OnTheWay drops packets as they arrive (netfilter's input hook): the
	// sender's stack sent them and hears nothing back, as when a network
	// between two machines loses them.
	OnTheWay Where = iota
	// AtSender drops packets as they leave (the output hook), as a
	// firewall on the sender's machine does: its stack sees the send
	// fail.
	AtSender
)

const dropTable = "weft_netnstest_drop"

// DropTCP drops every TCP packet to or from addr:port from now on (an
// nftables table in the calling process's network namespace, at where),
// the way a path that loses packets does: nothing is refused or reset,
// connections stay open and TCP tries again into the void. It counts the
// tries it drops: SYNs and segments carrying data (PSH) towards
// addr:port, not bare ACKs. Lift ends it (also at the end of t). Only for
// a test in Isolated's child: anywhere else, the host's own namespace
// included, it fails t.
func DropTCP(t testing.TB, addr string, port int, where Where) *Drop {
	t.Helper()
	parent := os.Getenv(hostNSEnv)
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil || os.Getenv(isolatedEnv) == "" || parent == "" || self == parent {
		t.Fatalf("drop tcp: only inside netnstest.Isolated's namespace (this one: %s, err %v)", self, err)
	}
	// Loopback traffic passes output, then input, both directions.
	hook := "input"
	if where == AtSender {
		hook = "output"
	}
	rules := fmt.Sprintf(`table ip %[1]s {
	chain lose {
		type filter hook %[4]s priority 0; policy accept;
		ip daddr %[2]s tcp dport %[3]d tcp flags & (syn | psh) != 0 counter drop
		ip daddr %[2]s tcp dport %[3]d drop
		ip saddr %[2]s tcp sport %[3]d drop
	}
}
`, dropTable, addr, port, hook)
	if _, err := nft(rules, "-f", "-"); err != nil {
		t.Fatalf("drop tcp %s:%d: %v", addr, port, err)
	}
	d := &Drop{t: t, what: fmt.Sprintf("tcp %s:%d", addr, port)}
	t.Cleanup(d.Lift)
	return d
}

// Dropped is how many tries towards addr:port were dropped so far.
func (d *Drop) Dropped() (uint64, error) {
	out, err := nft("", "-j", "list", "table", "ip", dropTable)
	if err != nil {
		return 0, fmt.Errorf("read the drop counters: %w", err)
	}
	var list struct {
		Nftables []struct {
			Rule *struct {
				Expr []struct {
					Counter *struct{ Packets uint64 } `json:"counter"`
				} `json:"expr"`
			} `json:"rule"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(out, &list); err != nil {
		return 0, fmt.Errorf("read the drop counters: %w", err)
	}
	var n uint64
	for _, o := range list.Nftables {
		if o.Rule == nil {
			continue
		}
		for _, e := range o.Rule.Expr {
			if e.Counter != nil {
				n += e.Counter.Packets
			}
		}
	}
	return n, nil
}

// LiftAfterNextTry lifts the drop as soon as it has dropped one more try
// towards addr:port (it looks every 10 ms), within timeout, and returns
// how many it dropped in all. That is the moment least favourable to a
// client that waits for its own next try (a TCP retransmission with its
// backoff, a SYN): it just made one, and lost it.
func (d *Drop) LiftAfterNextTry(timeout time.Duration) uint64 {
	d.t.Helper()
	n0, err := d.Dropped()
	if err != nil {
		d.t.Fatal(err)
	}
	for end := time.Now().Add(timeout); ; time.Sleep(10 * time.Millisecond) {
		n, err := d.Dropped()
		if err != nil {
			d.t.Fatal(err)
		}
		if n > n0 {
			d.Lift()
			return n
		}
		if time.Now().After(end) {
			d.t.Fatalf("drop %s: no try dropped in %v", d.what, timeout)
		}
	}
}

// Lift ends the drop; lifting twice is fine.
func (d *Drop) Lift() {
	if d.lifted {
		return
	}
	d.lifted = true
	if _, err := nft("", "delete", "table", "ip", dropTable); err != nil {
		d.t.Errorf("lift the drop of %s: %v", d.what, err)
	}
}

// nft runs nft with args, rules on its standard input, and returns its
// output.
func nft(rules string, args ...string) ([]byte, error) {
	cmd := exec.Command("nft", args...)
	cmd.Stdin = strings.NewReader(rules)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("nft %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}
