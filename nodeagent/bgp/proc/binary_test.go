package proc

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/nodeagent/bgp"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv/birdtest"
	"github.com/weftnet/weft/testenv/netnstest"
	"github.com/weftnet/weft/testenv/poll"
	"github.com/weftnet/weft/testenv/syncbuf"
)

// buildSpeaker compiles cmd/weft-bgp into a temporary directory.
func buildSpeaker(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("go", "build", "-o", dir+"/", "../../../cmd/weft-bgp").CombinedOutput()
	if err != nil {
		t.Fatalf("build weft-bgp: %v\n%s", err, out)
	}
	return filepath.Join(dir, Binary)
}

// eventually polls cond every 50 ms for up to d.
func eventually(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	poll.Eventually(t, d, 50*time.Millisecond, what, cond)
}

// TestBinaryAgainstBIRD runs the real weft-bgp, built by the test, through
// Client (the agent's side) in two node namespaces peering with BIRD 2 by
// eBGP, one session with TCP MD5: each node's prefix reaches BIRD and the
// other node; a killed child shows its sessions idle with the reason,
// keeps its routes (graceful restart) and is restarted; Stop without
// withdraw leaves the node's route in BIRD, Stop with withdraw removes it.
func TestBinaryAgainstBIRD(t *testing.T) {
	netnstest.RequireRoot(t)
	if _, err := exec.LookPath(birdtest.Path); err != nil {
		t.Skip("needs BIRD 2 (Debian package bird2): " + birdtest.Path + " missing")
	}
	bin := buildSpeaker(t)
	prefix := fmt.Sprintf("wbgpp%d", os.Getpid()%100000)
	r := netnstest.New(t, prefix+"-r")
	nodes := []*netnstest.NS{netnstest.New(t, prefix+"-n1"), netnstest.New(t, prefix+"-n2")}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	router := ip("10.79.0.254")
	must(r.Bridge("br0", pfx("10.79.0.254/24")))
	const password = "weft-md5-secret-77"
	conf := birdtest.Config{RouterID: router, ASN: 65000}
	for i, n := range nodes {
		port := fmt.Sprintf("p%d", i+1)
		must(r.Veth(port, n, "eth0"))
		must(n.Addr("eth0", pfx(fmt.Sprintf("10.79.0.%d/24", i+1))))
		must(n.Up("eth0"))
		must(r.Master(port, "br0"))
		must(r.Up(port))
		p := birdtest.Peer{Name: fmt.Sprintf("n%d", i+1), Neighbor: ip(fmt.Sprintf("10.79.0.%d", i+1)), NeighborASN: uint32(65001 + i)}
		if i == 1 {
			p.Password = password
		}
		conf.Peers = append(conf.Peers, p)
	}
	sock := startBIRD(t, r, conf)
	birdRoutes := func() string {
		out, err := birdtest.CLI(context.Background(), sock, "show", "route")
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprint(birdtest.Routes(out))
	}

	logs := &syncbuf.Buffer{}
	clients := make([]*Client, len(nodes))
	for i, n := range nodes {
		log := hclog.New(&hclog.LoggerOptions{Name: fmt.Sprintf("n%d", i+1), Output: logs, Level: hclog.Debug})
		clients[i] = New(Options{Path: bin, Logger: log, Start: func(cmd *exec.Cmd) error { return n.Do(cmd.Start) }})
		c, self := clients[i], ip(fmt.Sprintf("10.79.0.%d", i+1))
		cfg := bgp.Config{RouterID: self, ASN: uint32(65001 + i), ListenPort: 179, LocalAddress: self,
			Peers: []bgp.Peer{{Address: router, ASN: 65000}}, HoldTime: 3, Keepalive: 1, GracefulRestart: true, RestartTime: 60}
		if i == 1 {
			cfg.Peers[0].Password = password
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		must(c.Apply(ctx, cfg, []netip.Prefix{pfx(fmt.Sprintf("10.244.%d.0/24", i+1))}, []netip.Addr{self}))
		cancel()
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = c.Stop(ctx, true)
		})
	}
	c1, c2 := clients[0], clients[1]
	want1 := fmt.Sprint([]spec.Route{route("10.244.1.0/24", "10.79.0.1")})
	want2 := fmt.Sprint([]spec.Route{route("10.244.2.0/24", "10.79.0.2")})
	learned := func(c *Client, want string) (bool, string) {
		rs := c.Routes()
		return fmt.Sprint(rs) == want, fmt.Sprint(rs, " ", c.Sessions())
	}
	eventually(t, 30*time.Second, "BIRD learns both prefixes", func() (bool, string) {
		got := birdRoutes()
		return got == "map[10.244.1.0/24:10.79.0.1 10.244.2.0/24:10.79.0.2]", got
	})
	eventually(t, 30*time.Second, "n1 learns n2's prefix", func() (bool, string) { return learned(c1, want2) })
	eventually(t, 30*time.Second, "n2 learns n1's prefix over MD5", func() (bool, string) { return learned(c2, want1) })
	if s := c1.Sessions(); len(s) != 1 || s[0].GetState() != "established" || s[0].GetAdvertised() != 1 || s[0].GetReceived() != 1 {
		t.Errorf("n1 sessions %v, want one established, 1 advertised and 1 received", s)
	}
	if !strings.Contains(logs.String(), "speaker started") {
		t.Errorf("the child's log lines were not forwarded:\n%s", logs.String())
	}

	// Kill n1's child: its session shows idle with the reason, its routes
	// stay (graceful restart), and a new child takes over.
	var seen []*weftv1.BGPSession
	var seenMu sync.Mutex
	watchCtx, stopWatch := context.WithCancel(context.Background())
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			select {
			case <-watchCtx.Done():
				return
			case <-c1.Changed():
				seenMu.Lock()
				seen = append(seen, c1.Sessions()...)
				seenMu.Unlock()
			}
		}
	}()
	old := c1.Pid()
	must(syscall.Kill(old, syscall.SIGKILL))
	eventually(t, 20*time.Second, "n1's session reported idle because weft-bgp died", func() (bool, string) {
		seenMu.Lock()
		defer seenMu.Unlock()
		return slices.ContainsFunc(seen, func(s *weftv1.BGPSession) bool {
			return s.GetState() == "idle" && strings.Contains(s.GetReason(), "weft-bgp exited (signal: killed); restarting in")
		}), fmt.Sprint(seen)
	})
	if rs := fmt.Sprint(c1.Routes()); rs != want2 {
		t.Errorf("right after the kill n1's routes are %s, want n2's kept (graceful restart)", rs)
	}
	eventually(t, 30*time.Second, "a new child for n1, established again", func() (bool, string) {
		pid, s := c1.Pid(), c1.Sessions()
		return pid != 0 && pid != old && len(s) == 1 && s[0].GetState() == "established", fmt.Sprint(pid, s)
	})
	stopWatch()
	<-watched
	if n := c1.Exits(); n != 1 {
		t.Errorf("n1's Exits() = %d after one kill, want 1", n)
	}
	if syscall.Kill(old, 0) == nil {
		t.Errorf("the killed child %d still exists", old)
	}
	eventually(t, 30*time.Second, "n1 learns n2's prefix from its new child", func() (bool, string) { return learned(c1, want2) })
	if got := birdRoutes(); got != "map[10.244.1.0/24:10.79.0.1 10.244.2.0/24:10.79.0.2]" {
		t.Errorf("BIRD after n1's restart: %s", got)
	}

	// Stop without withdraw (the agent shutting down): the child exits,
	// BIRD keeps n2's route as graceful restart says; n1 keeps it too.
	pid2 := c2.Pid()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	must(c2.Stop(ctx, false))
	cancel()
	if c2.Pid() != 0 || syscall.Kill(pid2, 0) == nil {
		t.Errorf("n2's child %d still runs after Stop", pid2)
	}
	time.Sleep(4 * time.Second) // past BIRD's hold time of 3 s
	if got := birdRoutes(); !strings.Contains(got, "10.244.2.0/24:10.79.0.2") {
		t.Errorf("BIRD dropped n2's route after a stop without withdraw: %s", got)
	}
	// Stop with withdraw: BIRD drops n1's route.
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	must(c1.Stop(ctx, true))
	cancel()
	eventually(t, 10*time.Second, "n1's route withdrawn from BIRD", func() (bool, string) {
		got := birdRoutes()
		return !strings.Contains(got, "10.244.1.0/24"), got
	})
	for _, pw := range []string{password} {
		if strings.Contains(logs.String(), pw) {
			t.Errorf("the MD5 password is in the log")
		}
	}
	if t.Failed() {
		t.Logf("log:\n%s", logs.String())
	}
}

// startBIRD runs BIRD 2 in ns with conf and returns its control socket;
// it is stopped (by its PID, from its pidfile) when the test ends.
func startBIRD(t *testing.T, ns *netnstest.NS, conf birdtest.Config) string {
	t.Helper()
	dir := t.TempDir()
	sock, confPath, pidPath := filepath.Join(dir, "bird.ctl"), filepath.Join(dir, "bird.conf"), filepath.Join(dir, "bird.pid")
	conf.Log = filepath.Join(dir, "bird.log")
	if err := os.WriteFile(confPath, []byte(conf.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	// bird daemonizes: the command returns once it runs.
	if err := ns.Do(func() error {
		out, err := exec.Command(birdtest.Path, "-c", confPath, "-s", sock, "-P", pidPath).CombinedOutput()
		if err != nil {
			return fmt.Errorf("bird: %w: %s", err, out)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	pid := 0
	t.Cleanup(func() {
		if pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGTERM)
			for range 50 {
				if syscall.Kill(pid, 0) != nil {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
		if t.Failed() {
			out, _ := os.ReadFile(conf.Log)
			t.Logf("bird.log:\n%s", out)
		}
	})
	for range 100 {
		if raw, err := os.ReadFile(pidPath); err == nil {
			if p, err := strconv.Atoi(strings.TrimSpace(string(raw))); err == nil && p > 0 {
				pid = p
				return sock
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("bird wrote no pidfile")
	return ""
}
