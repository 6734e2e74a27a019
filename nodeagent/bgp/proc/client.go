package proc

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/encoding/protodelim"

	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/nodeagent/bgp"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// Binary is the speaker's command name.
const Binary = "weft-bgp"

// Defaults of Options.
const (
	DefaultRestartMin = time.Second
	DefaultRestartMax = 30 * time.Second
	// settle is how long a restarted child's sessions must all have been
	// established before the routes kept from its predecessor go (GoBGP
	// learns a returning peer's routes a few milliseconds after the
	// session comes up).
	settle = time.Second
	// DefaultCallTimeout bounds how long Apply and Stop wait for the
	// child (on top of the caller's ctx): a child that does not answer
	// is killed, and the agent's converge loop goes on.
	DefaultCallTimeout = 30 * time.Second
)

// Options configure a Client.
type Options struct {
	// Path is the weft-bgp binary; empty means Find("") when the first
	// Apply starts it.
	Path string
	// Logger receives the client's lines and the child's, forwarded line
	// by line at the child's level; nil means none. The child logs at the
	// logger's level.
	Logger hclog.Logger
	// Start starts cmd; nil means cmd.Start. It is called on an OS thread
	// that stays locked for the child's lifetime, so the child's parent
	// death signal (which follows the thread that forked it) fires only
	// when the agent is gone. Tests use it to start the child in a
	// network namespace.
	Start func(cmd *exec.Cmd) error
	// RestartMin and RestartMax bound the backoff between restarts of a
	// child that died (doubling from RestartMin; a child that lived a
	// minute starts the count over). Zero means the defaults.
	RestartMin, RestartMax time.Duration
	// CallTimeout bounds each wait for the child's answer; zero means
	// DefaultCallTimeout.
	CallTimeout time.Duration
}

// Client is the agent's BGP speaker: it runs weft-bgp as a child process
// and implements bgp.Speaker over it. The first Apply
// starts the child; Stop ends it. Routes and Sessions are served from the
// state the child last sent; Changed fires on each one.
//
// When the child dies without being asked (killed, crashed), the client
// logs it, shows every session idle with the reason, fires Changed, and
// starts a new child after a backoff, replaying the last successful
// Apply. Meanwhile, with graceful restart configured, Routes keeps the
// dead child's routes, as BGP graceful restart keeps a restarting peer's,
// until the new child's sessions have all been established for a second
// or the restart time has passed; without it they go at once, as they do
// at every peer of this node.
//
// A Client is safe for concurrent use.
type Client struct {
	o       Options
	log     hclog.Logger
	changed chan struct{}

	// op serializes Apply, Stop and restarts.
	op sync.Mutex

	mu    sync.Mutex
	child *child
	// want: Apply was called and Stop was not since; a dead child is
	// restarted only then.
	want     bool
	args     *applyArgs // the last successful Apply, replayed on restart
	tried    *applyArgs // the last Apply, whose peers show down when none reported
	routes   []spec.Route
	sessions []*weftv1.BGPSession
	// stale are a dead child's routes, kept until staleUntil.
	stale      []spec.Route
	staleUntil time.Time
	backoff    time.Duration
	// exits counts children that ended without Stop.
	exits uint64
	// badRoutes are the routes in the last state that did not parse;
	// dropped counts each when it first appears.
	badRoutes map[string]bool
	dropped   uint64
}

type applyArgs struct {
	cfg      bgp.Config
	adv      []netip.Prefix
	nexthops []netip.Addr
}

// New returns a client with no child; the first Apply starts one.
func New(o Options) *Client {
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	if o.RestartMin <= 0 {
		o.RestartMin = DefaultRestartMin
	}
	if o.CallTimeout <= 0 {
		o.CallTimeout = DefaultCallTimeout
	}
	if o.RestartMax < o.RestartMin {
		o.RestartMax = max(DefaultRestartMax, o.RestartMin)
	}
	return &Client{o: o, log: o.Logger.Named("bgp"), changed: make(chan struct{}, 1)}
}

// Find returns the speaker binary to run: path when set (it must be an
// executable file), else weft-bgp in the directory of the running
// executable, else weft-bgp on $PATH. The error names weft-agent's
// --bgp-speaker flag.
func Find(path string) (string, error) {
	if path != "" {
		if err := executable(path); err != nil {
			return "", fmt.Errorf("bgp speaker %s (--bgp-speaker): %w", path, err)
		}
		return path, nil
	}
	var beside string
	if exe, err := os.Executable(); err == nil {
		beside = filepath.Join(filepath.Dir(exe), Binary)
		if executable(beside) == nil {
			return beside, nil
		}
	}
	p, err := exec.LookPath(Binary)
	if err != nil {
		return "", fmt.Errorf("find bgp speaker: %s is neither at %s nor on $PATH (name it with --bgp-speaker)", Binary, beside)
	}
	return p, nil
}

func executable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return errors.New("not an executable file")
	}
	return nil
}

// Apply starts the child if none runs and has it apply the arguments; it
// returns the child's error (wrapping bgp.ErrInvalidConfig for an
// unusable config), or why the child could not be started or answered
// (it died, or ctx ended, or it did not answer within CallTimeout: then
// it is killed and restarted). See gobgp.Speaker.Apply for the semantics.
func (c *Client) Apply(ctx context.Context, cfg bgp.Config, advertise []netip.Prefix, nexthops []netip.Addr) error {
	if err := cfg.Check(); err != nil {
		return err
	}
	c.op.Lock()
	defer c.op.Unlock()
	c.mu.Lock()
	c.want = true
	ch := c.child
	c.mu.Unlock()
	if ch == nil {
		var err error
		if ch, err = c.spawn(); err != nil {
			return err
		}
	}
	args := &applyArgs{cfg: cfg, adv: slices.Clone(advertise), nexthops: slices.Clone(nexthops)}
	args.cfg.Peers = slices.Clone(cfg.Peers)
	c.mu.Lock()
	c.tried = args
	c.mu.Unlock()
	actx, cancel := context.WithTimeout(ctx, c.o.CallTimeout)
	defer cancel()
	if err := ch.apply(actx, args); err != nil {
		ch.killIfHung(ctx, actx)
		return err
	}
	c.mu.Lock()
	c.args = args
	c.mu.Unlock()
	return nil
}

// Stop has the child stop (withdrawing or not, see gobgp.Speaker.Stop)
// and waits for it to exit; when ctx ends first, or after CallTimeout,
// the child is killed. A pending restart is cancelled. Stop without a child is a no-op.
func (c *Client) Stop(ctx context.Context, withdraw bool) error {
	c.op.Lock()
	defer c.op.Unlock()
	c.mu.Lock()
	c.want = false
	ch := c.child
	c.mu.Unlock()
	var err error
	if ch != nil {
		ctx, cancel := context.WithTimeout(ctx, c.o.CallTimeout)
		defer cancel()
		ch.stopping.Store(true)
		rep, cerr := ch.call(ctx, &weftv1.SpeakerRequest{Op: &weftv1.SpeakerRequest_Stop{Stop: &weftv1.SpeakerStop{Withdraw: withdraw}}})
		if cerr != nil {
			err = cerr
		} else if rep.GetError() != "" {
			err = errors.New(rep.GetError())
		}
		// End of stdin makes the child exit.
		ch.in.Close()
		select {
		case <-ch.done:
		case <-ctx.Done():
			_ = ch.cmd.Process.Kill()
			<-ch.done
			err = errors.Join(err, fmt.Errorf("wait for %s to exit: %w", Binary, ctx.Err()))
		}
	}
	c.mu.Lock()
	c.child, c.args, c.tried, c.routes, c.sessions, c.stale, c.staleUntil = nil, nil, nil, nil, nil, nil, time.Time{}
	c.mu.Unlock()
	c.notify()
	return err
}

// Routes returns the routes the child last reported, sorted by prefix,
// and while a dead child's routes are kept (graceful restart), those
// too where the new child has none for the prefix.
func (c *Client) Routes() []spec.Route {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stale == nil || !time.Now().Before(c.staleUntil) {
		return slices.Clone(c.routes)
	}
	out := slices.Clone(c.routes)
	for _, r := range c.stale {
		if !slices.ContainsFunc(c.routes, func(x spec.Route) bool { return x.Prefix == r.Prefix }) {
			out = append(out, r)
		}
	}
	// Stable: a prefix's paths keep the child's order (its best first).
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i].Prefix, out[j].Prefix
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c < 0
		}
		return a.Bits() < b.Bits()
	})
	return out
}

// Sessions returns the sessions the child last reported; while no child
// runs after one died, every session is "idle" with the reason.
func (c *Client) Sessions() []*weftv1.BGPSession {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.sessions)
}

// Changed is signalled (capacity 1, never closed) when Routes or Sessions
// may have changed: the child sent its state, died, or was restarted or
// stopped.
func (c *Client) Changed() <-chan struct{} { return c.changed }

func (c *Client) notify() {
	select {
	case c.changed <- struct{}{}:
	default:
	}
}

// Pid is the running child's process id, 0 when none runs.
func (c *Client) Pid() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.child == nil {
		return 0
	}
	return c.child.cmd.Process.Pid
}

// child is one weft-bgp process.
type child struct {
	cmd *exec.Cmd
	// in is the write end of the child's stdin, a pipe of our own so that
	// a write can be given up (SetWriteDeadline) when the child does not
	// read.
	in      *os.File
	started time.Time
	// stopping: Stop asked it to end, so its exit is not a failure.
	stopping atomic.Bool

	wmu sync.Mutex // one request at a time on in

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan *weftv1.SpeakerReply

	done chan struct{} // closed when the process has exited
	err  error         // why, set before done closes
}

// spawn starts a child and makes it c.child. The caller holds c.op.
func (c *Client) spawn() (*child, error) {
	path, err := Find(c.o.Path)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(path, "--log-level", childLevel(c.o.Logger))
	// The child never outlives the agent: a dead agent's speaker would
	// keep advertising for a node nobody converges. Killed with its
	// parent, its sessions end as the agent's own did when it ran the
	// speaker in-process (the kernel closes the sockets).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	inR, in, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", Binary, err)
	}
	cmd.Stdin = inR
	out, err := cmd.StdoutPipe()
	var errOut io.ReadCloser
	if err == nil {
		errOut, err = cmd.StderrPipe()
	}
	if err != nil {
		inR.Close()
		in.Close()
		return nil, fmt.Errorf("start %s: %w", Binary, err)
	}
	ch := &child{cmd: cmd, in: in, pending: map[uint64]chan *weftv1.SpeakerReply{}, done: make(chan struct{})}
	start := c.o.Start
	if start == nil {
		start = (*exec.Cmd).Start
	}
	started := make(chan error, 1)
	go func() {
		// Never unlocked: the thread that forks the child must live as
		// long as the child (Pdeathsig follows the thread), and a
		// goroutine that exits locked takes its thread with it, after
		// the child is gone.
		runtime.LockOSThread()
		err := start(cmd)
		inR.Close() // the child's end, which it holds now
		if err != nil {
			in.Close()
			started <- err
			return
		}
		ch.started = time.Now()
		var readers sync.WaitGroup
		readers.Go(func() { c.readMessages(ch, out) })
		readers.Go(func() { forwardLogs(c.log, errOut) })
		go continueStopped(cmd.Process.Pid, ch.done)
		// c.child is set before exited can run for it.
		c.mu.Lock()
		c.child = ch
		c.mu.Unlock()
		started <- nil
		// Wait closes the pipes, so the readers finish first.
		readers.Wait()
		err = cmd.Wait()
		in.Close()
		ch.err = err
		close(ch.done)
		c.exited(ch, err)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", path, err)
	}
	c.log.Info("speaker process started", "path", path, "pid", cmd.Process.Pid)
	return ch, nil
}

// childLevel is the --log-level that makes the child log what logger
// shows.
func childLevel(logger hclog.Logger) string {
	l := logger.GetLevel()
	if l < hclog.Trace || l > hclog.Error {
		return "info"
	}
	return l.String()
}

func (ch *child) apply(ctx context.Context, a *applyArgs) error {
	rep, err := ch.call(ctx, &weftv1.SpeakerRequest{Op: &weftv1.SpeakerRequest_Apply{Apply: applyToProto(a.cfg, a.adv, a.nexthops)}})
	if err != nil {
		return err
	}
	if msg := rep.GetError(); msg != "" {
		if rep.GetInvalidConfig() {
			return fmt.Errorf("%w: %s", bgp.ErrInvalidConfig, strings.TrimPrefix(msg, bgp.ErrInvalidConfig.Error()+": "))
		}
		return errors.New(msg)
	}
	return nil
}

// killIfHung kills the child when the call under actx ran out of time
// while the caller's ctx did not: a child that does not answer is no
// speaker, and its exit starts a new one.
func (ch *child) killIfHung(ctx, actx context.Context) {
	if actx.Err() != nil && ctx.Err() == nil {
		_ = ch.cmd.Process.Kill()
	}
}

// call sends req and waits for its reply, the child's end, or ctx.
func (ch *child) call(ctx context.Context, req *weftv1.SpeakerRequest) (*weftv1.SpeakerReply, error) {
	reply := make(chan *weftv1.SpeakerReply, 1)
	ch.mu.Lock()
	ch.nextID++
	req.Id = ch.nextID
	ch.pending[req.Id] = reply
	ch.mu.Unlock()
	defer func() {
		ch.mu.Lock()
		delete(ch.pending, req.Id)
		ch.mu.Unlock()
	}()
	ch.wmu.Lock()
	n, err := ch.send(ctx, req)
	ch.wmu.Unlock()
	if err != nil {
		select {
		case <-ch.done:
			return nil, fmt.Errorf("%s exited: %v", Binary, ch.err)
		default:
		}
		if n > 0 {
			// Part of a request is in the pipe: the stream cannot go on.
			_ = ch.cmd.Process.Kill()
		}
		return nil, fmt.Errorf("send to %s: %w", Binary, err)
	}
	select {
	case r := <-reply:
		return r, nil
	case <-ch.done:
		return nil, fmt.Errorf("%s exited: %v", Binary, ch.err)
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for %s: %w", Binary, ctx.Err())
	}
}

// send writes req to the child, giving up when ctx ends (a child that does
// not read its stdin would block the write for ever once the pipe is
// full). It returns how many bytes went. The caller holds wmu.
func (ch *child) send(ctx context.Context, req *weftv1.SpeakerRequest) (int, error) {
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = ch.in.SetWriteDeadline(time.Unix(1, 0))
		close(fired)
	})
	n, err := protodelim.MarshalTo(ch.in, req)
	if !stop() {
		<-fired
		_ = ch.in.SetWriteDeadline(time.Time{})
		if errors.Is(err, os.ErrDeadlineExceeded) {
			err = ctx.Err()
		}
	}
	return n, err
}

// readMessages reads the child's stdout until it ends.
func (c *Client) readMessages(ch *child, out io.Reader) {
	r := bufio.NewReader(out)
	for {
		m := &weftv1.SpeakerMessage{}
		if err := (protodelim.UnmarshalOptions{MaxSize: maxMessage}).UnmarshalFrom(r, m); err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, os.ErrClosed) {
				c.log.Error("read from speaker process", "error", err)
				// An unreadable stream cannot be resynchronized.
				_ = ch.cmd.Process.Kill()
				_, _ = io.Copy(io.Discard, r)
			}
			return
		}
		switch x := m.GetMsg().(type) {
		case *weftv1.SpeakerMessage_Reply:
			// Each pending call takes one reply (its channel holds one); a
			// second with the same id is dropped, never waited on.
			ch.mu.Lock()
			if p, ok := ch.pending[x.Reply.GetId()]; ok {
				delete(ch.pending, x.Reply.GetId())
				p <- x.Reply
			}
			ch.mu.Unlock()
		case *weftv1.SpeakerMessage_State:
			c.onState(ch, x.State)
		}
	}
}

func (c *Client) onState(ch *child, st *weftv1.SpeakerState) {
	c.mu.Lock()
	if c.child != ch {
		c.mu.Unlock()
		return
	}
	routes, bad := routesFromProto(st.GetRoutes())
	c.routes, c.sessions = routes, st.GetSessions()
	// A route that stays bad is logged and counted once, not with every
	// state that repeats it.
	was := c.badRoutes
	c.badRoutes = map[string]bool{}
	for _, b := range bad {
		c.badRoutes[b] = true
		if !was[b] {
			c.dropped++
			c.log.Error("route from the speaker process dropped", "pid", ch.cmd.Process.Pid, "problem", b)
		}
	}
	if c.stale != nil && allEstablished(c.sessions) {
		if until := time.Now().Add(settle); until.Before(c.staleUntil) {
			c.staleUntil = until
			time.AfterFunc(settle, c.notify)
		}
	}
	c.mu.Unlock()
	c.notify()
}

func allEstablished(ss []*weftv1.BGPSession) bool {
	for _, s := range ss {
		if s.GetState() != "established" {
			return false
		}
	}
	return len(ss) > 0
}

// exited handles the end of ch: nothing when Stop ended it, otherwise a
// failure to report and a restart to schedule.
func (c *Client) exited(ch *child, err error) {
	c.mu.Lock()
	if c.child != ch || ch.stopping.Load() {
		c.mu.Unlock()
		return
	}
	c.child = nil
	c.exits++
	why := fmt.Sprintf("%s exited (%v)", Binary, err)
	if c.args != nil && c.args.cfg.GracefulRestart && len(c.routes) > 0 {
		c.stale = c.routes
		keep := time.Duration(cmp0(c.args.cfg.RestartTime, bgp.DefaultRestartTime)) * time.Second
		c.staleUntil = time.Now().Add(keep)
		// Routes drops them then; the agent must hear of it even when
		// no new child reports by then.
		time.AfterFunc(keep, c.notify)
	}
	c.routes = nil
	d := c.nextBackoff(time.Since(ch.started))
	c.downLocked(fmt.Sprintf("%s; restarting in %s", why, d))
	c.mu.Unlock()
	c.log.Error("speaker process died; sessions are down until it is restarted", "pid", ch.cmd.Process.Pid, "error", err, "restart_in", d)
	c.notify()
	time.AfterFunc(d, c.restart)
}

func cmp0(v, def uint32) uint32 {
	if v == 0 {
		return def
	}
	return v
}

// Exits is how many children have ended without Stop asking them to
// (killed, crashed, or killed by the client for not answering). Sessions
// show a dead child only until its successor is up, a second or so; the
// count keeps the event visible afterwards (the agent exports it as
// weft_agent_bgp_speaker_exits_total).
func (c *Client) Exits() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.exits
}

// DroppedRoutes is how many learned routes the child reported that the
// client could not parse and left out of Routes (each counted once while
// the child keeps reporting it; the agent exports it as
// weft_agent_bgp_routes_dropped_total). Each is logged at error level,
// naming the route and the field.
func (c *Client) DroppedRoutes() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dropped
}

// nextBackoff doubles the backoff, starting over after a child that
// lived a minute.
func (c *Client) nextBackoff(lived time.Duration) time.Duration {
	if c.backoff == 0 || lived >= time.Minute {
		c.backoff = c.o.RestartMin
	} else {
		c.backoff = min(2*c.backoff, c.o.RestartMax)
	}
	return c.backoff
}

// downLocked shows every session (the last reported, else the peers of
// the last Apply) idle with reason.
func (c *Client) downLocked(reason string) {
	var out []*weftv1.BGPSession
	if len(c.sessions) > 0 {
		for _, s := range c.sessions {
			out = append(out, &weftv1.BGPSession{Peer: s.GetPeer(), State: "idle", Reason: reason})
		}
	} else if c.tried != nil {
		for _, p := range c.tried.cfg.Peers {
			out = append(out, &weftv1.BGPSession{Peer: p.Address.String(), State: "idle", Reason: reason})
		}
	}
	c.sessions = out
}

// restart starts a child in place of one that died, if still wanted and
// none runs, and replays the last Apply; when that fails it tries again
// after the next backoff.
func (c *Client) restart() {
	c.op.Lock()
	defer c.op.Unlock()
	c.mu.Lock()
	if !c.want || c.child != nil {
		c.mu.Unlock()
		return
	}
	args := c.args
	c.mu.Unlock()
	ch, err := c.spawn()
	if err == nil && args != nil {
		ctx, cancel := context.WithTimeout(context.Background(), c.o.CallTimeout)
		err = ch.apply(ctx, args)
		cancel()
		if err != nil {
			// A child that does not take the config is no speaker. Its
			// exit's reason will only say it was killed, so say why here.
			c.log.Error("restarted speaker process refused the last apply; killing it", "pid", ch.cmd.Process.Pid, "error", err)
			_ = ch.cmd.Process.Kill()
			return // its exit schedules the next try
		}
	}
	if err != nil {
		c.mu.Lock()
		d := c.nextBackoff(0)
		c.downLocked(fmt.Sprintf("restart %s: %v; next try in %s", Binary, err, d))
		c.mu.Unlock()
		c.log.Error("speaker process not restarted", "error", err, "next_try_in", d)
		c.notify()
		time.AfterFunc(d, c.restart)
		return
	}
	c.log.Info("speaker process restarted", "pid", ch.cmd.Process.Pid)
}

// maxLogLine bounds one forwarded line of the child's log; the rest of a
// longer line is dropped.
const maxLogLine = 1 << 20

// forwardLogs turns the child's JSON log lines into lines of log, at
// their level, with their fields; a line that is not JSON (a panic) is
// forwarded as an error. It reads r to its end whatever it holds: a child
// whose stderr is not read blocks in its next log line.
func forwardLogs(log hclog.Logger, r io.Reader) {
	br := bufio.NewReaderSize(r, 64<<10)
	var line []byte
	cut := false
	for {
		frag, err := br.ReadSlice('\n')
		if room := maxLogLine - len(line); len(frag) > room {
			frag, cut = frag[:room], true
		}
		line = append(line, frag...)
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if line = bytes.TrimSuffix(line, []byte("\n")); len(line) > 0 {
			if cut {
				log.Error(Binary+" output cut", "bytes", maxLogLine, "line", string(line))
			} else {
				forwardLine(log, line)
			}
		}
		line, cut = line[:0], false
		if err != nil {
			return
		}
	}
}

func forwardLine(log hclog.Logger, line []byte) {
	var m map[string]any
	if err := json.Unmarshal(line, &m); err != nil {
		log.Error(Binary+" output", "line", string(line))
		return
	}
	level := hclog.Info
	if s, ok := m["@level"].(string); ok {
		if l := hclog.LevelFromString(s); l != hclog.NoLevel {
			level = l
		}
	}
	msg, _ := m["@message"].(string)
	keys := make([]string, 0, len(m))
	for k := range m {
		if !strings.HasPrefix(k, "@") {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	args := make([]any, 0, 2*len(keys))
	for _, k := range keys {
		args = append(args, k, m[k])
	}
	log.Log(level, msg, args...)
}
