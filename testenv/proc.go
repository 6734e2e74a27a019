package testenv

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is one process testenv started: a weft binary or an etcd member,
// running inside a network namespace, with its output in a log file of the
// run directory and its PID and start time in a pidfile there (so Down
// finds it after a crash without matching process names).
type Proc struct {
	Name string   // unique within the run, e.g. "agent-n0"
	NS   string   // network namespace it runs in
	Args []string // argv, Args[0] is the binary
	Env  []string // extra environment
	Log  string   // path of the log file (appended to across restarts)

	pidfile string
	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	started time.Time
}

// Start runs the process (again, if it ended): see start.
func (p *Proc) Start() error { return p.start() }

// start runs argv in the named namespace. The fork happens on a thread
// locked into that namespace, so the child starts there without `ip netns
// exec` (which would remount /sys and hide the shared bpffs).
func (p *Proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && !p.exited() {
		return fmt.Errorf("start %s: already running as pid %d", p.Name, p.cmd.Process.Pid)
	}
	logf, err := os.OpenFile(p.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open log of %s: %w", p.Name, err)
	}
	fmt.Fprintf(logf, "=== testenv: start %s at %s: %s\n", p.Name, time.Now().Format(time.RFC3339Nano), strings.Join(p.Args, " "))
	cmd := exec.Command(p.Args[0], p.Args[1:]...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Env = append(os.Environ(), p.Env...)
	// Own process group so a Ctrl-C on the terminal reaches testenv only;
	// testenv then stops its children in order. SIGKILL on our death so a
	// crashed test leaves no weft process behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p.started = time.Now()
	if err := inNSStart(p.NS, cmd); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	logf.Close()
	// The child is not reaped before cmd.Wait below, so its /proc entry
	// (a zombie's included) is there to read the start time from.
	id := procIDOf(cmd.Process.Pid)
	if id.start == "" {
		cmd.Process.Kill()
		cmd.Wait()
		return fmt.Errorf("write pidfile of %s: no start time for pid %d", p.Name, id.pid)
	}
	if err := os.WriteFile(p.pidfile, []byte(id.String()+"\n"), 0o644); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return fmt.Errorf("write pidfile of %s: %w", p.Name, err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	p.cmd, p.done = cmd, done
	return nil
}

// exited reports whether the current child has ended; p.mu must be held.
func (p *Proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Started is when the current child was started: the moment before the
// fork, so a benchmark timing a start from it includes the exec.
func (p *Proc) Started() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.started
}

// Running reports whether the process is alive.
func (p *Proc) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil && !p.exited()
}

// PID is the process id of the current child, 0 if none.
func (p *Proc) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.exited() {
		return 0
	}
	return p.cmd.Process.Pid
}

// Signal sends sig to the process; an ended process is not an error.
func (p *Proc) Signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.exited() {
		return nil
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal %s: %w", p.Name, err)
	}
	return nil
}

// Wait waits up to d for the process to end and reports whether it did.
func (p *Proc) Wait(d time.Duration) bool {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	if done == nil {
		return true
	}
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// Stop ends the process: SIGTERM, then SIGKILL after grace.
func (p *Proc) Stop(grace time.Duration) error {
	if err := p.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	if p.Wait(grace) {
		return nil
	}
	if err := p.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	if !p.Wait(10 * time.Second) {
		return fmt.Errorf("stop %s: still running after SIGKILL", p.Name)
	}
	return nil
}

// Kill sends SIGKILL and waits for the process to end.
func (p *Proc) Kill() error {
	if err := p.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	if !p.Wait(10 * time.Second) {
		return fmt.Errorf("kill %s: still running", p.Name)
	}
	return nil
}

func inNSStart(name string, cmd *exec.Cmd) error {
	if name == "" {
		return cmd.Start()
	}
	// If the thread cannot leave the namespace it exits, and the child
	// dies with it (Pdeathsig), which Start's caller sees.
	return InNS(name, cmd.Start)
}

// procID names one process for the whole boot: its PID and its start time
// (field 22 of /proc/<pid>/stat, in clock ticks since boot). A later
// process that gets the same PID has another start time, so a recycled PID
// is never taken for the process recorded.
//
// The start time is set at fork and kept across exec, so it can be read as
// soon as cmd.Start returns. The command line cannot: Start returns when
// the child's exec has passed the point of no return, before the kernel has
// laid out the new program's arguments, and until then
// /proc/<pid>/cmdline reads empty (seen right after 1 start in 6 on an idle
// machine).
type procID struct {
	pid   int
	start string
}

// procIDOf reads pid's start time; start is "" if there is no such process.
func procIDOf(pid int) procID { return procID{pid: pid, start: procStart(pid)} }

// String is the form kept in pidfiles and owner files: "<pid> <start>".
func (id procID) String() string { return fmt.Sprintf("%d %s", id.pid, id.start) }

// parseProcID reads the form String writes.
func parseProcID(s string) (procID, bool) {
	pidStr, start, _ := strings.Cut(strings.TrimSpace(s), " ")
	pid, err := strconv.Atoi(pidStr)
	if err != nil || pid <= 1 || start == "" {
		return procID{}, false
	}
	return procID{pid: pid, start: start}, true
}

// alive reports whether the process id names is still running (or a
// zombie not yet reaped).
func (id procID) alive() bool { return id.start != "" && procStart(id.pid) == id.start }

// procStart returns field 22 of /proc/<pid>/stat, "" if pid is gone.
func procStart(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	// Field 2 is the command name in parentheses and may hold spaces
	// and parentheses itself: count fields from the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(string(b[i+1:]))
	const startField = 22 - 3 // fields after ')' begin with field 3
	if len(f) <= startField {
		return ""
	}
	return f[startField]
}

// pidfilesIn lists the processes recorded in dir/*.pid.
func pidfilesIn(dir string) map[string]procID {
	out := map[string]procID{}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".pid") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		if id, ok := parseProcID(string(b)); ok {
			out[filepath.Join(dir, e.Name())] = id
		}
	}
	return out
}

// cmdlineOf returns the NUL-joined command line of pid ("" if gone).
func cmdlineOf(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return ""
	}
	return strings.ReplaceAll(string(b), "\x00", " ")
}

// readFileTail returns at most the last max bytes of a file.
func readFileTail(path string, max int64) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	off := st.Size() - max
	if off < 0 {
		off = 0
	}
	b := make([]byte, st.Size()-off)
	_, err = f.ReadAt(b, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	return string(b), nil
}
