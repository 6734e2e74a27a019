package gobgp

// Test harness: network namespaces built with testenv/netnstest, and one
// speaker per namespace in a child process.
//
// Why child processes: a socket lives in the network namespace of the
// thread that creates it. GoBGP creates its listener on the goroutine that
// runs Serve, but dials every peer from a per-peer goroutine on whatever
// thread the scheduler picks (pkg/server/fsm.go connectLoop), so speakers
// in one process would all dial from the root namespace. Each speaker
// therefore runs in this test binary re-executed inside its namespace
// (TestMain diverts it to helperMain), driven over stdin/stdout with one
// JSON request and one JSON reply per line. That is also how the agent
// runs: one process per node namespace.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/nodeagent/bgp"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv/netnstest"
)

const helperEnv = "WEFT_BGP_TEST_HELPER"

type request struct {
	Op        string         `json:"op"` // apply, routes, sessions, wait, stop, exit
	Config    bgp.Config     `json:"config"`
	Advertise []netip.Prefix `json:"advertise,omitempty"`
	Nexthops  []netip.Addr   `json:"nexthops"`
	Withdraw  bool           `json:"withdraw,omitempty"`
	// wait: until every Present route is learned (Via checked when set),
	// no Absent prefix is, and every Established peer is established.
	Present     []spec.Route   `json:"present,omitempty"`
	Absent      []netip.Prefix `json:"absent,omitempty"`
	Established []string       `json:"established,omitempty"`
	TimeoutMS   int            `json:"timeout_ms,omitempty"`
}

type reply struct {
	Err      string               `json:"err,omitempty"`
	Routes   []spec.Route         `json:"routes,omitempty"`
	Sessions []*weftv1.BGPSession `json:"sessions,omitempty"`
	// At is when a wait was satisfied (UnixNano), for the benchmark.
	At int64 `json:"at,omitempty"`
}

// helperMain runs in the child: one speaker, driven by stdin.
func helperMain(mode string) {
	if mode == "garbage" {
		garbageMain()
		return
	}
	level := hclog.LevelFromString(os.Getenv(helperEnv + "_LOG"))
	if level == hclog.NoLevel {
		level = hclog.Info
	}
	log := hclog.New(&hclog.LoggerOptions{Name: mode, Level: level, Output: os.Stderr})
	sp := New(log)
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var req request
		var rep reply
		if err := json.Unmarshal(in.Bytes(), &req); err != nil {
			rep.Err = err.Error()
			_ = out.Encode(rep)
			continue
		}
		ctx := context.Background()
		switch req.Op {
		case "apply":
			if err := sp.Apply(ctx, req.Config, req.Advertise, req.Nexthops); err != nil {
				rep.Err = err.Error()
			}
		case "routes":
			rep.Routes = sp.Routes()
		case "sessions":
			rep.Sessions = sp.Sessions()
		case "wait":
			rep = helperWait(sp, &req)
		case "stop":
			if err := sp.Stop(ctx, req.Withdraw); err != nil {
				rep.Err = err.Error()
			}
		case "exit":
			_ = out.Encode(rep)
			os.Exit(0)
		default:
			rep.Err = "unknown op " + req.Op
		}
		_ = out.Encode(rep)
	}
}

func helperWait(sp *Speaker, req *request) reply {
	deadline := time.After(time.Duration(req.TimeoutMS) * time.Millisecond)
	for {
		// Drain the signal before reading, so a change after the read
		// wakes the next round.
		select {
		case <-sp.Changed():
		default:
		}
		routes, sessions := sp.Routes(), sp.Sessions()
		if why := unmet(req, routes, sessions); why == "" {
			return reply{Routes: routes, Sessions: sessions, At: time.Now().UnixNano()}
		} else {
			select {
			case <-sp.Changed():
			case <-time.After(250 * time.Millisecond):
			case <-deadline:
				return reply{Err: "timeout: " + why, Routes: routes, Sessions: sessions}
			}
		}
	}
}

// unmet says which condition of a wait does not hold yet, "" when all do.
func unmet(req *request, routes []spec.Route, sessions []*weftv1.BGPSession) string {
	for _, want := range req.Present {
		i := slices.IndexFunc(routes, func(r spec.Route) bool { return r.Prefix == want.Prefix })
		if i < 0 {
			return fmt.Sprintf("%v not learned", want.Prefix)
		}
		if want.Via.IsValid() && routes[i].Via != want.Via {
			return fmt.Sprintf("%v via %v, want via %v", want.Prefix, routes[i].Via, want.Via)
		}
	}
	for _, p := range req.Absent {
		if slices.ContainsFunc(routes, func(r spec.Route) bool { return r.Prefix == p }) {
			return fmt.Sprintf("%v still learned", p)
		}
	}
	for _, peer := range req.Established {
		if !slices.ContainsFunc(sessions, func(s *weftv1.BGPSession) bool { return s.Peer == peer && s.State == "established" }) {
			return fmt.Sprintf("session with %s not established", peer)
		}
	}
	return ""
}

// garbageMain plays a BGP peer that answers every connection on port 179
// with bytes that are not BGP.
func garbageMain() {
	l, err := net.Listen("tcp", ":179")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("ready")
	for {
		c, err := l.Accept()
		if err != nil {
			os.Exit(0)
		}
		go func() {
			defer c.Close()
			// A header whose length field (5) is shorter than a header,
			// then text.
			junk := append(make([]byte, 16), 0, 5, 1)
			junk = append(junk, "GET / HTTP/1.1\r\nHost: not-bgp\r\n\r\n"...)
			for range 20 {
				if _, err := c.Write(junk); err != nil {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}()
	}
}

var labSeq atomic.Int32

// lab is a set of network namespaces owned by one test.
type lab struct {
	t      testing.TB
	prefix string
	dir    string
	nss    map[string]*netnstest.NS // by full name
}

func newLab(t testing.TB) *lab {
	t.Helper()
	netnstest.RequireRoot(t)
	return &lab{t: t, prefix: fmt.Sprintf("wbgp%d-%d", os.Getpid()%100000, labSeq.Add(1)), dir: t.TempDir(),
		nss: map[string]*netnstest.NS{}}
}

func (l *lab) must(err error) {
	l.t.Helper()
	if err != nil {
		l.t.Fatal(err)
	}
}

// ns creates namespace <prefix>-name with lo up and returns its full name.
func (l *lab) ns(name string) string {
	l.t.Helper()
	n := netnstest.New(l.t, l.prefix+"-"+name)
	l.nss[n.Name] = n
	return n.Name
}

// bridge creates bridge br in ns, with addr (a prefix like 10.0.0.254/24)
// when valid.
func (l *lab) bridge(ns, br string, addr netip.Prefix) {
	l.t.Helper()
	var addrs []netip.Prefix
	if addr.IsValid() {
		addrs = append(addrs, addr)
	}
	l.must(l.nss[ns].Bridge(br, addrs...))
}

// attach gives node ns an eth0 with addr, plugged into bridge br of brNS
// through port.
func (l *lab) attach(node string, addr netip.Prefix, brNS, br, port string) {
	l.t.Helper()
	n, b := l.nss[node], l.nss[brNS]
	l.must(b.Veth(port, n, "eth0"))
	l.must(n.Addr("eth0", addr))
	l.must(n.Up("eth0"))
	l.must(b.Master(port, br))
	l.must(b.Up(port))
}

// start starts cmd inside ns (the fork happens on a thread in ns).
func (l *lab) start(ns string, cmd *exec.Cmd) error {
	return l.nss[ns].Do(cmd.Start)
}

// proc is a speaker running in a child process inside a namespace.
type proc struct {
	t    testing.TB
	name string
	cmd  *exec.Cmd
	in   *json.Encoder
	out  *bufio.Scanner
	log  string
}

// speaker starts a child speaker in ns. logLevel "" means info.
func (l *lab) speaker(ns, name, logLevel string) *proc {
	l.t.Helper()
	return l.child(ns, name, name, logLevel)
}

// child starts this test binary as helper mode in ns.
func (l *lab) child(ns, name, mode, logLevel string) *proc {
	l.t.Helper()
	exe, err := os.Executable()
	if err != nil {
		l.t.Fatal(err)
	}
	p := &proc{t: l.t, name: name, log: filepath.Join(l.dir, name+".log")}
	logf, err := os.OpenFile(p.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		l.t.Fatal(err)
	}
	p.cmd = exec.Command(exe)
	p.cmd.Env = append(os.Environ(), helperEnv+"="+mode, helperEnv+"_LOG="+logLevel)
	p.cmd.Stderr = logf
	stdin, err := p.cmd.StdinPipe()
	if err != nil {
		l.t.Fatal(err)
	}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		l.t.Fatal(err)
	}
	if err := l.start(ns, p.cmd); err != nil {
		l.t.Fatalf("start %s: %v", name, err)
	}
	_ = logf.Close()
	p.in = json.NewEncoder(stdin)
	p.out = bufio.NewScanner(stdout)
	p.out.Buffer(make([]byte, 1<<20), 1<<20)
	l.t.Cleanup(func() {
		p.kill()
		if l.t.Failed() {
			b, _ := os.ReadFile(p.log)
			l.t.Logf("log of %s:\n%s", name, tail(string(b), 60))
		}
	})
	return p
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// kill ends the child by its PID.
func (p *proc) kill() {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGCONT)
	_ = p.cmd.Process.Kill()
	_ = p.cmd.Wait()
}

func (p *proc) signal(sig syscall.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("signal %s: %v", p.name, err)
	}
}

func (p *proc) call(req request) (reply, error) {
	if err := p.in.Encode(req); err != nil {
		return reply{}, fmt.Errorf("send to %s: %w", p.name, err)
	}
	if !p.out.Scan() {
		return reply{}, fmt.Errorf("%s exited: %v", p.name, p.out.Err())
	}
	var rep reply
	if err := json.Unmarshal(p.out.Bytes(), &rep); err != nil {
		return reply{}, fmt.Errorf("decode reply of %s: %w", p.name, err)
	}
	if rep.Err != "" {
		return rep, errors.New(rep.Err)
	}
	return rep, nil
}

func (p *proc) must(req request) reply {
	p.t.Helper()
	rep, err := p.call(req)
	if err != nil {
		p.t.Fatalf("%s %s: %v (routes %v, sessions %v)", p.name, req.Op, err, rep.Routes, rep.Sessions)
	}
	return rep
}

func (p *proc) apply(cfg bgp.Config, nexthop netip.Addr, adv ...netip.Prefix) {
	p.t.Helper()
	p.must(request{Op: "apply", Config: cfg, Advertise: adv, Nexthops: []netip.Addr{nexthop}})
}

// applyDual is apply with a next hop per family.
func (p *proc) applyDual(cfg bgp.Config, nexthops []netip.Addr, adv ...netip.Prefix) {
	p.t.Helper()
	p.must(request{Op: "apply", Config: cfg, Advertise: adv, Nexthops: nexthops})
}

func (p *proc) wait(timeout time.Duration, req request) reply {
	p.t.Helper()
	req.Op, req.TimeoutMS = "wait", int(timeout/time.Millisecond)
	return p.must(req)
}

func (p *proc) session(peer string) *weftv1.BGPSession {
	p.t.Helper()
	for _, s := range p.must(request{Op: "sessions"}).Sessions {
		if s.Peer == peer {
			return s
		}
	}
	p.t.Fatalf("%s has no session with %s", p.name, peer)
	return nil
}

// logHas reports whether the child's log contains s.
func (p *proc) logHas(s string) bool {
	b, err := os.ReadFile(p.log)
	if err != nil {
		p.t.Fatal(err)
	}
	return strings.Contains(string(b), s)
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func ip(s string) netip.Addr    { return netip.MustParseAddr(s) }
