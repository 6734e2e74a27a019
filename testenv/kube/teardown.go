package kube

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/weftnet/weft/testenv"
)

// NetNSMount is a network namespace bound to a file (an nsfs mount), as a
// mount namespace's mountinfo lists it.
type NetNSMount struct {
	Node string // the node whose containerd made it
	Path string // mount point
	NS   string // the namespace's identity, "net:[<inode>]"
}

// NetNSDir is where the node's containerd keeps its pod sandboxes' network
// namespaces: under its CRI state directory (netns_mounts_under_state_dir),
// not in the host's /run/netns, where they would outlive the node.
func (n *Node) NetNSDir() string {
	return filepath.Join(filepath.Dir(n.Root), "containerd", "state", "io.containerd.grpc.v1.cri", "netns")
}

// PodLogsDir is the node's pod logs directory (the kubelet's podLogsDir),
// under the run directory instead of the host's /var/log/pods.
func (n *Node) PodLogsDir() string { return filepath.Join(filepath.Dir(n.Root), "pod-logs") }

// SandboxNetNS lists the network namespaces bound to files in the node's
// mount namespace: the ones containerd made for its pod sandboxes,
// wherever its configuration puts them. The copies of the host's named
// namespaces the node's mount namespace started with are unmounted when it
// is made (startHolder), and any bound the same way in this process's
// mount namespace is left out as well: those are never the node's.
func (n *Node) SandboxNetNS() ([]NetNSMount, error) {
	if n.holder == nil || !n.holder.Running() {
		return nil, fmt.Errorf("node %s: mount namespace not running", n.Name)
	}
	ms, err := readMountinfo(n.holder.PID())
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", n.Name, err)
	}
	host, err := readMountinfo(os.Getpid())
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", n.Name, err)
	}
	hostNS := map[mountEntry]bool{}
	for _, m := range host {
		hostNS[m] = true
	}
	var out []NetNSMount
	for _, m := range ms {
		if m.fstype == "nsfs" && strings.HasPrefix(m.root, "net:[") && !hostNS[m] {
			out = append(out, NetNSMount{Node: n.Name, Path: m.point, NS: m.root})
		}
	}
	return out, nil
}

// releaseNetNS unmounts (inside the node's mount namespace only) and
// removes every network namespace file containerd left after its
// sandboxes were removed. Nothing should be left when the sandboxes were
// stopped through the CRI, so what it had to release is returned as an
// error naming it. It kills nothing: a process still inside such a
// namespace is one of Leftovers' findings.
func (n *Node) releaseNetNS(left []NetNSMount) error {
	if len(left) == 0 {
		return nil
	}
	var errs []error
	var names []string
	for _, m := range left {
		names = append(names, m.Path)
		out, err := exec.Command("nsenter", "--target", strconv.Itoa(n.holder.PID()), "--mount", "--", "umount", m.Path).CombinedOutput()
		if err != nil {
			errs = append(errs, fmt.Errorf("unmount %s in %s: %w: %s", m.Path, n.Name, err, strings.TrimSpace(string(out))))
			continue
		}
		if err := os.Remove(m.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", m.Path, err))
		}
	}
	errs = append(errs, fmt.Errorf("node %s: pod network namespaces left after the sandboxes were removed (unmounted and removed): %s",
		n.Name, strings.Join(names, ", ")))
	return errors.Join(errs...)
}

// Leftovers lists everything of the cluster still on the machine after
// Close: testenv's leftovers of the run (namespaces, links, pins,
// processes, the run directory), and the pod sandboxes' network namespaces
// the nodes' containerds had (still a file, still bound in this process's
// mount namespace, or entered by any process or by one of this process's
// threads), any mount under the run directory in any mount namespace of
// the machine, and the run's pods' log directories in the host's
// /var/log/pods and links in its /var/log/containers. Empty means clean.
func (c *Cluster) Leftovers() []string {
	out := testenv.Leftovers(c.Prefix)
	c.mu.Lock()
	netns := append([]NetNSMount(nil), c.netns...)
	sandboxes := append([]Sandbox(nil), c.sandboxes...)
	c.mu.Unlock()

	host, hostErr := readMountinfo(os.Getpid())
	if hostErr != nil {
		out = append(out, hostErr.Error())
	}
	// A namespace's inode number is unique only among live namespaces:
	// once a sandbox's is freed the kernel gives its number to the next
	// namespace made, often another test's. One bound under another
	// run's name in /run/netns is that run's (testenv makes those afresh
	// and never binds an existing namespace), so it is not this
	// cluster's sandbox.
	reused := otherRunsNetNS(host, c.Prefix)
	want := map[string]NetNSMount{}
	for _, m := range netns {
		if _, err := os.Lstat(m.Path); err == nil {
			out = append(out, fmt.Sprintf("netns file %s (sandbox of %s)", m.Path, m.Node))
		}
		if !reused[m.NS] {
			want[m.NS] = m
		}
	}
	wants := map[string]bool{}
	for ns := range want {
		wants[ns] = true
	}
	for _, p := range procsIn(wants) {
		what := "process"
		if p.self {
			what = "this test's thread"
		}
		out = append(out, fmt.Sprintf("%s %d in sandbox netns %s of %s", what, p.pid, p.netns, want[p.netns].Node))
	}
	// Bound in this process's mount namespace (the host's): a pod's
	// handle, or a sandbox namespace under the old /run/netns. Copies in
	// the mount namespaces of other tests' nodes, made while this run was
	// up by code that does not drop them (startHolder does), are theirs.
	for _, m := range host {
		if m.fstype == "nsfs" && want[m.root].NS != "" {
			out = append(out, fmt.Sprintf("sandbox netns %s of %s mounted at %s", m.root, want[m.root].Node, m.point))
		}
	}
	run := testenv.RunDirOf(c.Prefix)
	for pid, ms := range mountNamespaces() {
		for _, m := range ms {
			if m.point == run || strings.HasPrefix(m.point, run+"/") {
				out = append(out, fmt.Sprintf("mount %s (mount namespace of process %d)", m.point, pid))
			}
		}
	}
	for _, sb := range sandboxes {
		if _, err := os.Lstat(filepath.Join(HostPodLogsDir, sb.LogDirName())); err == nil {
			out = append(out, fmt.Sprintf("pod logs %s", filepath.Join(HostPodLogsDir, sb.LogDirName())))
		}
	}
	for _, sb := range sandboxes {
		links, _ := filepath.Glob(filepath.Join(HostContainerLogsDir, sb.Name+"_"+sb.Namespace+"_*"))
		for _, l := range links {
			out = append(out, "container log link "+l)
		}
	}
	// The demo pods are named after the run even when no sandbox of them
	// was left to record.
	logs, _ := filepath.Glob(filepath.Join(HostPodLogsDir, "*_"+c.Prefix+"-*"))
	for _, l := range logs {
		out = append(out, "pod logs "+l)
	}
	links, _ := filepath.Glob(filepath.Join(HostContainerLogsDir, c.Prefix+"-*"))
	for _, l := range links {
		out = append(out, "container log link "+l)
	}
	sort.Strings(out)
	return slices.Compact(out)
}

// otherRunsNetNS returns the namespaces bound in mounts (the host's) as
// another testenv run's named namespaces: /run/netns/<p>-… where p is not
// prefix and has a run directory.
func otherRunsNetNS(mounts []mountEntry, prefix string) map[string]bool {
	out := map[string]bool{}
	for _, m := range mounts {
		if m.fstype != "nsfs" {
			continue
		}
		dir, name := filepath.Split(m.point)
		if dir != "/run/netns/" && dir != "/var/run/netns/" {
			continue
		}
		p, _, ok := strings.Cut(name, "-")
		if !ok || p == prefix || p == "" {
			continue
		}
		if st, err := os.Stat(testenv.RunDirOf(p)); err == nil && st.IsDir() {
			out[m.root] = true
		}
	}
	return out
}

// HostPodLogsDir is where a kubelet writes container logs by default, and
// HostContainerLogsDir where it links them by container name; the test
// kubelets write into their node's PodLogsDir and link in their node's own
// /var/log/containers (Node.HostPath).
const (
	HostPodLogsDir       = "/var/log/pods"
	HostContainerLogsDir = "/var/log/containers"
)

type mountEntry struct {
	root, point, fstype string
}

// readMountinfo parses /proc/<pid>/mountinfo: root (4th field), mount
// point (5th, octal escapes decoded) and the filesystem type after " - ".
func readMountinfo(pid int) ([]mountEntry, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	defer f.Close()
	var out []mountEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		fields := strings.Fields(pre)
		rest := strings.Fields(post)
		if !ok || len(fields) < 5 || len(rest) < 1 {
			continue
		}
		out = append(out, mountEntry{root: unescapeMount(fields[3]), point: unescapeMount(fields[4]), fstype: rest[0]})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	return out, nil
}

// unescapeMount decodes mountinfo's \ooo escapes (space, tab, newline,
// backslash).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// mountNamespaces returns the mounts of every mount namespace on the
// machine, each read through one process in it, by that process's PID.
func mountNamespaces() map[int][]mountEntry {
	seen := map[string]bool{}
	out := map[int][]mountEntry{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		id, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
		if err != nil || seen[id] {
			continue
		}
		ms, err := readMountinfo(pid)
		if err != nil {
			continue
		}
		seen[id] = true
		out[pid] = ms
	}
	return out
}

type nsProc struct {
	pid   int
	netns string
	self  bool // a thread of this process
}

// procsIn lists the processes whose network namespace is one of netns
// ("net:[<inode>]"), and this process's threads in one (an echo server's
// or a check's locked thread).
func procsIn(netns map[string]bool) []nsProc {
	if len(netns) == 0 {
		return nil
	}
	var out []nsProc
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pid == os.Getpid() {
			continue
		}
		if id, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid)); err == nil && netns[id] {
			out = append(out, nsProc{pid: pid, netns: id})
		}
	}
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, t := range tasks {
		if id, err := os.Readlink(filepath.Join("/proc/self/task", t.Name(), "ns/net")); err == nil && netns[id] {
			tid, _ := strconv.Atoi(t.Name())
			out = append(out, nsProc{pid: tid, netns: id, self: true})
		}
	}
	return out
}
