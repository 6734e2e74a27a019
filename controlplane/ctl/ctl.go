// Package ctl is weftctl: it reads and checks the store and asks the
// controller for config changes. cmd/weftctl calls Main; tests call it too.
//
// Exit codes: 0 ok, 1 failure (etcd unreachable, config refused, check
// failed), 2 usage.
package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/weftnet/weft/controlplane/store"
	"github.com/weftnet/weft/internal/envflags"
	"github.com/weftnet/weft/internal/etcdconn"
	"github.com/weftnet/weft/proto/configfile"
	"github.com/weftnet/weft/proto/keys"
	"github.com/weftnet/weft/proto/validate"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// Exit codes.
const (
	ExitOK    = 0
	ExitFail  = 1
	ExitUsage = 2
)

var errUsage = errors.New("usage")

const usage = `usage: weftctl [--etcd-endpoints URLS] [--etcd-cafile F --etcd-certfile F --etcd-keyfile F]
               [--prefix P] [--timeout D] [-o table|json] VERB
flags also come from WEFT_ETCD_ENDPOINTS, WEFT_PREFIX, ...
verbs:
  nodes                      nodes in the projection
  events [--since N] [--follow]
                             the event log from seq N (default: all retained)
  status                     each node's applied seq against the head, peers it
                             cannot reach and why; problems
  config get                 the config in force and the answer to the last desired config
  config set FILE|-          ask for a config (JSON or YAML ClusterConfig) ...
  config set --mtu 1400 ...  ... or change fields of the config in force (--cluster-cidr-v6 CIDR
                             adds IPv6 to a running IPv4 cluster; --big-tcp, --big-tcp-v6
                             in native, gateway and bgp mode, --big-tcp also over VXLAN
                             with --tunnel-datapath bpf: the programs encapsulate VXLAN
                             themselves; config set --help
                             lists every field flag)
  check                      verify the store: log contiguous, fold == projection, subnets guarded
  auth setup                 etcd users and roles of the cluster (controller, operator,
                             reader, one per node in the store) and root; turns etcd
                             auth on. Idempotent; once auth is on, only root may run it
  auth add-node NAME         node NAME's etcd user and role (run before its agent starts)
  auth remove-node NAME      delete them: the node's certificate opens nothing any more
  certs ca [--dir D] [--days N]
                             make a CA for etcd's certificates (D/ca.crt, D/ca.key)
  certs issue [--dir D] [--days N] [--force] controller|operator|reader|root
  certs issue [--dir D] [--days N] [--force] node NAME
                             a client certificate whose CN is that etcd user
  certs issue [--dir D] [--days N] [--force] --hosts H,... server NAME
                             etcd's serving certificate for the names H
Every verb gives up after --timeout (default 10s; events --follow: its first
read) and says why: a TLS failure names the endpoint and what failed.
`

type cli struct {
	c       *clientv3.Client
	conn    etcdconn.Config
	k       keys.Layout
	json    bool
	timeout time.Duration
	stdin   io.Reader
	out     io.Writer
	errOut  io.Writer
}

// DefaultTimeout bounds each verb (--timeout).
const DefaultTimeout = 10 * time.Second

// Main runs weftctl with args (without the program name) and returns the
// exit code. ctx ends --follow.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	fs := flag.NewFlagSet("weftctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage) }
	endpoints := fs.String("etcd-endpoints", "http://127.0.0.1:2379", "comma-separated etcd client URLs (env WEFT_ETCD_ENDPOINTS)")
	prefix := fs.String("prefix", keys.DefaultPrefix, "etcd key prefix of the cluster (env WEFT_PREFIX)")
	output := fs.String("o", "table", "output: table or json")
	caFile := fs.String("etcd-cafile", "", "CA bundle to verify etcd's certificate (enables TLS)")
	certFile := fs.String("etcd-certfile", "", "client certificate for etcd (its CN is the etcd user)")
	keyFile := fs.String("etcd-keyfile", "", "client key for etcd")
	timeout := fs.Duration("timeout", DefaultTimeout, "give up on a verb after this long")
	if err := fs.Parse(args); err != nil {
		return ExitUsage
	}
	// WEFT_ETCD_ENDPOINTS for --etcd-endpoints, and so on; flags win.
	if _, err := envflags.Apply(fs, getenv, "o"); err != nil {
		fmt.Fprintln(stderr, "weftctl:", err)
		return ExitUsage
	}
	if *output != "table" && *output != "json" {
		fmt.Fprintf(stderr, "weftctl: -o %q: want table or json\n", *output)
		return ExitUsage
	}
	if err := etcdconn.CheckEndpoints(etcdconn.Split(*endpoints)); err != nil {
		fmt.Fprintf(stderr, "weftctl: --etcd-endpoints: %v\n", err)
		return ExitUsage
	}
	if err := keys.ValidPrefix(*prefix); err != nil {
		fmt.Fprintf(stderr, "weftctl: --prefix: %v\n", err)
		return ExitUsage
	}
	if *timeout <= 0 {
		fmt.Fprintf(stderr, "weftctl: --timeout %s: want a positive duration\n", *timeout)
		return ExitUsage
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fmt.Fprint(stderr, usage)
		return ExitUsage
	}
	x := &cli{k: keys.New(*prefix), json: *output == "json", timeout: *timeout, stdin: stdin, out: stdout, errOut: stderr,
		conn: etcdconn.Config{Endpoints: etcdconn.Split(*endpoints), CA: *caFile, Cert: *certFile, Key: *keyFile}}
	var err error
	if rest[0] == "certs" {
		// Files only: no etcd.
		err = x.certs(rest[1:])
	} else {
		err = x.connected(ctx, rest)
	}
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "weftctl: %v\n%s", err, usage)
		return ExitUsage
	case errors.Is(err, errSilent):
		return ExitFail
	default:
		fmt.Fprintln(stderr, "weftctl:", err)
		return ExitFail
	}
}

// connected runs a verb that talks to etcd, and explains a failure to get
// through (TLS, nothing listening) or a refusal (which etcd user).
func (x *cli) connected(ctx context.Context, args []string) error {
	c, err := etcdconn.New(x.conn)
	if err != nil {
		return err
	}
	defer c.Close()
	x.c = c
	return x.conn.Explain(ctx, x.run(ctx, args))
}

// errSilent: the failure was already reported on stdout.
var errSilent = errors.New("failed")

// bounded is ctx limited to --timeout, for a verb's requests.
func (x *cli) bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, x.timeout)
}

func (x *cli) run(ctx context.Context, args []string) error {
	verb, rest := args[0], args[1:]
	// events --follow and config set bound their own waits.
	if verb != "events" && verb != "config" {
		var cancel context.CancelFunc
		ctx, cancel = x.bounded(ctx)
		defer cancel()
	}
	switch verb {
	case "nodes":
		if len(rest) > 0 {
			return fmt.Errorf("%w: nodes takes no arguments", errUsage)
		}
		return x.nodes(ctx)
	case "events":
		return x.events(ctx, rest)
	case "status":
		if len(rest) > 0 {
			return fmt.Errorf("%w: status takes no arguments", errUsage)
		}
		return x.status(ctx)
	case "config":
		if len(rest) == 0 {
			return fmt.Errorf("%w: config get|set", errUsage)
		}
		switch rest[0] {
		case "get":
			ctx, cancel := x.bounded(ctx)
			defer cancel()
			return x.configGet(ctx)
		case "set":
			return x.configSet(ctx, rest[1:])
		}
		return fmt.Errorf("%w: config %q", errUsage, rest[0])
	case "check":
		if len(rest) > 0 {
			return fmt.Errorf("%w: check takes no arguments", errUsage)
		}
		return x.check(ctx)
	case "auth":
		return x.auth(ctx, rest)
	}
	return fmt.Errorf("%w: unknown verb %q", errUsage, verb)
}

func (x *cli) table() *tabwriter.Writer { return tabwriter.NewWriter(x.out, 0, 4, 2, ' ', 0) }

// protoJSON renders messages as one JSON array.
func protoJSON[T proto.Message](ms []T) json.RawMessage {
	parts := make([]string, len(ms))
	for i, m := range ms {
		parts[i] = string(keys.Encode(m))
	}
	return json.RawMessage("[" + strings.Join(parts, ",") + "]")
}

func (x *cli) writeJSON(v any) error {
	e := json.NewEncoder(x.out)
	e.SetIndent("", "  ")
	return e.Encode(v)
}

func (x *cli) nodes(ctx context.Context) error {
	p, err := store.Read(ctx, x.c, x.k)
	if err != nil {
		return err
	}
	st := p.State
	// A node whose projected value is bad is listed as such, not
	// skipped: weftctl shows what etcd holds.
	bad := badNodes(x.k, p.Bad)
	names := slices.Sorted(maps.Keys(st.Nodes))
	if x.json {
		out := make([]json.RawMessage, 0, len(names)+len(bad))
		for _, n := range slices.Sorted(maps.Keys(bad)) {
			b, _ := json.Marshal(map[string]string{"name": n, "bad_value": bad[n]})
			out = append(out, b)
		}
		for _, n := range names {
			out = append(out, keys.Encode(st.Nodes[n]))
		}
		return x.writeJSON(out)
	}
	w := x.table()
	fmt.Fprintln(w, "NAME\tUNDERLAY\tPOD CIDRS\tSEQ")
	for _, n := range slices.Sorted(slices.Values(append(names, slices.Collect(maps.Keys(bad))...))) {
		if why, ok := bad[n]; ok {
			fmt.Fprintf(w, "%s\t<bad value: %.200s>\t\t\n", text(n), text(why))
			continue
		}
		nd := st.Nodes[n]
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\n", text(nd.Name), text(underlay(nd)), text(strings.Join(nd.PodCidrs, ",")), nd.Seq)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	for _, f := range p.Bad {
		if !strings.HasPrefix(f.Key, x.k.Nodes()) {
			fmt.Fprintf(x.out, "%s: <bad value: %.200s>\n", text(f.Key), text(f.Problem))
		}
	}
	return nil
}

// badNodes picks the node keys out of a projection's bad keys: node name
// → what is wrong.
func badNodes(k keys.Layout, bad []store.Finding) map[string]string {
	out := map[string]string{}
	for _, f := range bad {
		if name, err := keys.NameOf(k.Nodes(), f.Key); err == nil {
			out[name] = f.Problem
		}
	}
	return out
}

// underlay is a node's underlay address, with its IPv6 one after a comma
// on a dual-stack underlay.
func underlay(n *weftv1.Node) string {
	if n.GetUnderlayIpV6() != "" {
		return n.GetUnderlayIp() + "," + n.GetUnderlayIpV6()
	}
	return n.GetUnderlayIp()
}

// Summary is a one-line description of an event.
func Summary(e *weftv1.Event) (kind, what string) {
	switch k := e.Kind.(type) {
	case *weftv1.Event_ConfigChanged:
		c := k.ConfigChanged.GetConfig()
		var parts []string
		if c.GetClusterCidr() != "" {
			parts = append(parts, "cluster_cidr="+c.GetClusterCidr())
		}
		if c.GetClusterCidrV6() != "" {
			parts = append(parts, "cluster_cidr_v6="+c.GetClusterCidrV6())
		}
		cidrs := strings.Join(parts, " ")
		return "ConfigChanged", fmt.Sprintf("%s backend=%s vni=%d mtu=%d", cidrs, c.GetBackend(), c.GetVni(), c.GetMtu())
	case *weftv1.Event_NodeAdded:
		n := k.NodeAdded.GetNode()
		return "NodeAdded", fmt.Sprintf("%s %s %s", n.GetName(), underlay(n), strings.Join(n.GetPodCidrs(), ","))
	case *weftv1.Event_NodeUpdated:
		n := k.NodeUpdated.GetNode()
		return "NodeUpdated", fmt.Sprintf("%s %s %s", n.GetName(), underlay(n), strings.Join(n.GetPodCidrs(), ","))
	case *weftv1.Event_NodeRemoved:
		return "NodeRemoved", fmt.Sprintf("%s (%s)", k.NodeRemoved.GetName(), k.NodeRemoved.GetReason())
	}
	return "?", ""
}

func (x *cli) events(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("events", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	since := fs.Uint64("since", 0, "first seq to show")
	follow := fs.Bool("follow", false, "keep printing new events")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: events: %v; usage: events [--since N] [--follow]", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: events: unexpected argument %q; usage: events [--since N] [--follow]", errUsage, fs.Arg(0))
	}
	rctx, cancel := x.bounded(ctx)
	defer cancel()
	r, err := x.c.Get(rctx, x.k.Event(*since), clientv3.WithRange(clientv3.GetPrefixRangeEnd(x.k.Events())))
	if err != nil {
		return fmt.Errorf("read events: %w", err)
	}
	// Tables print as they go (for --follow); JSON is one event per line.
	print := func(key string, v []byte) error {
		e, err := keys.DecodeEvent(v)
		if err != nil {
			// Shown as what etcd holds, not a reason to stop.
			if x.json {
				b, _ := json.Marshal(map[string]string{"key": key, "bad_value": err.Error()})
				_, err := fmt.Fprintln(x.out, string(b))
				return err
			}
			_, err = fmt.Fprintf(x.out, "%-8s %-30s %-14s <bad value: %.200s>\n", text(strings.TrimPrefix(key, x.k.Events())), "", "?", text(err.Error()))
			return err
		}
		if x.json {
			_, err := fmt.Fprintln(x.out, string(keys.Encode(e)))
			return err
		}
		kind, what := Summary(e)
		_, err = fmt.Fprintf(x.out, "%-8d %-30s %-14s %s\n", e.Seq, text(e.Time), kind, text(what))
		return err
	}
	if !x.json {
		fmt.Fprintf(x.out, "%-8s %-30s %-14s %s\n", "SEQ", "TIME", "KIND", "WHAT")
	}
	for _, kv := range r.Kvs {
		if err := print(string(kv.Key), kv.Value); err != nil {
			return err
		}
	}
	if !*follow {
		return nil
	}
	wc := x.c.Watch(clientv3.WithRequireLeader(ctx), x.k.Events(), clientv3.WithPrefix(), clientv3.WithRev(r.Header.Revision+1))
	for resp := range wc {
		if err := resp.Err(); err != nil {
			return fmt.Errorf("follow events: %w", err)
		}
		for _, ev := range resp.Events {
			if ev.Type == mvccpb.PUT {
				if err := print(string(ev.Kv.Key), ev.Kv.Value); err != nil {
					return err
				}
			}
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	return errors.New("follow events: watch ended")
}

// NodeStatus is one row of weftctl status.
type NodeStatus struct {
	Name       string `json:"name"`
	AppliedSeq uint64 `json:"applied_seq"`
	Behind     uint64 `json:"behind"`
	Reporting  bool   `json:"reporting"`
	Degraded   bool   `json:"degraded"`
	LastError  string `json:"last_error,omitempty"`
	// NotConverged is what the node's first convergence still waits for,
	// as its agent reported it (AgentStatus.not_converged).
	NotConverged string `json:"not_converged,omitempty"`
	Converged    bool   `json:"converged"`
	// BadValue says what is wrong with the node's projected value
	// (/weft/nodes/<name>) when it does not decode or validate.
	BadValue string `json:"bad_value,omitempty"`
	// BadStatus says what is wrong with the node's status
	// (/weft/status/<name>, key and field) when it does not validate or
	// claims an applied seq beyond the head; such a status is not
	// believed (the node is neither reporting nor converged).
	BadStatus string `json:"bad_status,omitempty"`
	// PodCIDRs are the pod CIDRs the agent applied (one per family).
	PodCIDRs []string `json:"pod_cidrs,omitempty"`
	// BGPSessions are the node's BGP sessions (bgp mode only).
	BGPSessions []BGPSession `json:"bgp_sessions,omitempty"`
	// BGPRefusedRoutes are learned BGP routes the agent refused to
	// install ("<prefix> via <next hop>: <why>", the first 64);
	// BGPRefusedCount is how many it refuses.
	BGPRefusedRoutes []string `json:"bgp_refused_routes,omitempty"`
	BGPRefusedCount  uint32   `json:"bgp_refused_count,omitempty"`
	// ReachablePeers answered the node's last probe; UnreachablePeers do
	// not answer probes through its datapath (they make it degraded).
	ReachablePeers   uint32            `json:"reachable_peers"`
	UnreachablePeers []UnreachablePeer `json:"unreachable_peers,omitempty"`
	// UnreachableCount is how many peers are unreachable; the agent lists
	// only the first of them (by node name) in UnreachablePeers.
	UnreachableCount uint32 `json:"unreachable_count,omitempty"`
}

// UnreachablePeer is a peer a node cannot reach, as its agent reported it.
type UnreachablePeer struct {
	Node    string `json:"node"`
	Address string `json:"address"`
	Reason  string `json:"reason"`
	Since   string `json:"since"`
}

// BGPSession is one BGP session of a node as its agent reported it.
type BGPSession struct {
	Peer       string `json:"peer"`
	State      string `json:"state"`
	Reason     string `json:"reason,omitempty"`
	Advertised uint32 `json:"advertised"`
	Received   uint32 `json:"received"`
}

// sessionsSummary is the SESSIONS cell: "established/configured up",
// peers the agent skipped as unreachable not counted; "-" without any.
func sessionsSummary(ss []BGPSession) string {
	up, total := 0, 0
	for _, s := range ss {
		if s.State == "skipped" {
			continue
		}
		total++
		if s.State == "established" {
			up++
		}
	}
	if total == 0 {
		return "-"
	}
	return fmt.Sprintf("%d/%d up", up, total)
}

// StatusReport is weftctl status as data.
type StatusReport struct {
	Head     uint64            `json:"head"`
	Nodes    []NodeStatus      `json:"nodes"`
	Problems map[string]string `json:"problems"`
	// BadValues names the projection keys (config, head, nodes) whose
	// value does not decode or validate, with why.
	BadValues map[string]string `json:"bad_values,omitempty"`
}

// Status reads each projected node's applied seq against the head, and
// the controller's recorded problems. A node whose agent reports that its
// first convergence waits (for its NodeAdded, say, while the controller is
// away) is listed too, projected or not.
func Status(ctx context.Context, c *clientv3.Client, k keys.Layout) (*StatusReport, error) {
	p, err := store.Read(ctx, c, k)
	if err != nil {
		return nil, err
	}
	st, rev := p.State, p.Revision
	bad := badNodes(k, p.Bad)
	r, err := c.Txn(ctx).Then(
		clientv3.OpGet(k.Statuses(), clientv3.WithPrefix(), clientv3.WithRev(rev)),
		clientv3.OpGet(k.Problems(), clientv3.WithPrefix(), clientv3.WithRev(rev)),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("read status: %w", err)
	}
	statuses := map[string]*weftv1.AgentStatus{}
	// A status that does not validate, or contradicts the store, is not
	// believed: key and field name what is wrong with it.
	badStatus := map[string]string{}
	for _, kv := range r.Responses[0].GetResponseRange().Kvs {
		name, err := keys.NameOf(k.Statuses(), string(kv.Key))
		if err != nil {
			continue
		}
		s, err := keys.DecodeStatus(kv.Value)
		if err != nil {
			s = &weftv1.AgentStatus{LastError: "undecodable status: " + err.Error(), Degraded: true}
		} else if err := validate.Status(name, s); err != nil {
			badStatus[name] = fmt.Sprintf("%s: %v", kv.Key, err)
			continue
		} else if s.AppliedSeq > st.Head {
			// Statuses are read at the projection's revision: no agent
			// applied an event the log did not hold yet.
			badStatus[name] = fmt.Sprintf("%s: applied_seq: %d is beyond the head %d", kv.Key, s.AppliedSeq, st.Head)
			continue
		}
		statuses[name] = s
	}
	rep := &StatusReport{Head: st.Head, Problems: map[string]string{}}
	for _, f := range p.Bad {
		if rep.BadValues == nil {
			rep.BadValues = map[string]string{}
		}
		rep.BadValues[f.Key] = f.Problem
	}
	for _, kv := range r.Responses[1].GetResponseRange().Kvs {
		name, _ := keys.NameOf(k.Problems(), string(kv.Key))
		p, err := keys.DecodeProblem(kv.Value)
		if err != nil {
			rep.Problems[name] = "undecodable problem: " + err.Error()
			continue
		}
		rep.Problems[name] = p.Reason
	}
	names := slices.Collect(maps.Keys(st.Nodes))
	for name := range bad {
		names = append(names, name)
	}
	for name, s := range statuses {
		_, projected := st.Nodes[name]
		_, isBad := bad[name]
		if !projected && !isBad && s.NotConverged != "" {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		ns := NodeStatus{Name: name, BadValue: bad[name], BadStatus: badStatus[name]}
		if s, ok := statuses[name]; ok {
			ns.Reporting = true
			ns.AppliedSeq, ns.Degraded, ns.LastError = s.AppliedSeq, s.Degraded, s.LastError
			ns.NotConverged = s.NotConverged
			ns.ReachablePeers = s.ReachablePeers
			ns.UnreachableCount = s.UnreachableCount
			ns.PodCIDRs = s.PodCidrs
			for _, u := range s.UnreachablePeers {
				ns.UnreachablePeers = append(ns.UnreachablePeers, UnreachablePeer{Node: u.Node, Address: u.Address, Reason: u.Reason, Since: u.Since})
			}
			ns.BGPRefusedRoutes, ns.BGPRefusedCount = s.BgpRefusedRoutes, s.BgpRefusedCount
			for _, b := range s.BgpSessions {
				ns.BGPSessions = append(ns.BGPSessions, BGPSession{Peer: b.Peer, State: b.State, Reason: b.Reason,
					Advertised: b.Advertised, Received: b.Received})
			}
		}
		if ns.AppliedSeq < st.Head {
			ns.Behind = st.Head - ns.AppliedSeq
		}
		ns.Converged = ns.Reporting && ns.Behind == 0 && !ns.Degraded && ns.LastError == "" && ns.BadValue == "" && ns.BadStatus == "" && ns.NotConverged == ""
		rep.Nodes = append(rep.Nodes, ns)
	}
	return rep, nil
}

func (x *cli) status(ctx context.Context) error {
	rep, err := Status(ctx, x.c, x.k)
	if err != nil {
		return err
	}
	if x.json {
		return x.writeJSON(rep)
	}
	fmt.Fprintf(x.out, "head %d\n", rep.Head)
	w := x.table()
	// The SESSIONS column appears when some node reports BGP sessions.
	bgp := slices.ContainsFunc(rep.Nodes, func(n NodeStatus) bool { return len(n.BGPSessions) > 0 })
	if bgp {
		fmt.Fprintln(w, "NODE\tAPPLIED\tBEHIND\tPOD CIDRS\tSESSIONS\tSTATE")
	} else {
		fmt.Fprintln(w, "NODE\tAPPLIED\tBEHIND\tPOD CIDRS\tSTATE")
	}
	for _, n := range rep.Nodes {
		state := "converged"
		switch {
		case n.BadValue != "":
			state = fmt.Sprintf("<bad value: %.200s>", text(n.BadValue))
		case n.BadStatus != "":
			state = fmt.Sprintf("<bad status: %.200s>", text(n.BadStatus))
		case !n.Reporting:
			state = "no status"
		case n.LastError != "":
			state = "error: " + text(n.LastError)
		case len(n.UnreachablePeers) > 0:
			k := unreachableCount(n)
			state = fmt.Sprintf("degraded: %d of %d peers unreachable", k, k+int(n.ReachablePeers))
		case n.Degraded:
			state = "degraded"
		case n.NotConverged != "":
			state = "converging: " + text(n.NotConverged)
		case n.Behind > 0:
			state = "behind"
		}
		applied := strconv.FormatUint(n.AppliedSeq, 10)
		if !n.Reporting {
			applied = "-"
		}
		cidrs := text(strings.Join(n.PodCIDRs, ","))
		if cidrs == "" {
			cidrs = "-"
		}
		if bgp {
			sessions := sessionsSummary(n.BGPSessions)
			if n.BGPRefusedCount > 0 {
				sessions += fmt.Sprintf(", %d refused", n.BGPRefusedCount)
			}
			fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\n", text(n.Name), applied, n.Behind, cidrs, sessions, state)
		} else {
			fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\n", text(n.Name), applied, n.Behind, cidrs, state)
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	// What each node cannot reach and why (the agent names the mode's
	// missing piece when it can tell).
	if slices.ContainsFunc(rep.Nodes, func(n NodeStatus) bool { return len(n.UnreachablePeers) > 0 }) {
		fmt.Fprintln(x.out, "\nunreachable peers:")
		for _, n := range rep.Nodes {
			for _, u := range n.UnreachablePeers {
				fmt.Fprintf(x.out, "  %s -> %s (%s) since %s: %s\n", text(n.Name), text(u.Node), text(u.Address), text(u.Since), text(u.Reason))
			}
			if more := unreachableCount(n) - listedPeers(n); more > 0 {
				fmt.Fprintf(x.out, "  %s -> %d more peers (its status lists the first by name; all on the agent's /unreachable)\n", n.Name, more)
			}
		}
	}
	// Learned BGP routes each node refused to install, and why.
	if slices.ContainsFunc(rep.Nodes, func(n NodeStatus) bool { return n.BGPRefusedCount > 0 }) {
		fmt.Fprintln(x.out, "\nrefused bgp routes:")
		for _, n := range rep.Nodes {
			for _, r := range n.BGPRefusedRoutes {
				fmt.Fprintf(x.out, "  %s: %s\n", text(n.Name), text(r))
			}
			if more := int(n.BGPRefusedCount) - len(n.BGPRefusedRoutes); more > 0 {
				fmt.Fprintf(x.out, "  %s: %d more (its status lists the first %d)\n", text(n.Name), more, len(n.BGPRefusedRoutes))
			}
		}
	}
	if len(rep.BadValues) > 0 {
		fmt.Fprintln(x.out, "\nbad values:")
		for _, key := range slices.Sorted(maps.Keys(rep.BadValues)) {
			fmt.Fprintf(x.out, "  %s: %.300s\n", text(key), text(rep.BadValues[key]))
		}
	}
	if len(rep.Problems) > 0 {
		fmt.Fprintln(x.out, "\nproblems:")
		for _, name := range slices.Sorted(maps.Keys(rep.Problems)) {
			fmt.Fprintf(x.out, "  %s: %s\n", text(name), text(rep.Problems[name]))
		}
	}
	return nil
}

func (x *cli) configGet(ctx context.Context) error {
	r, err := x.c.Txn(ctx).Then(clientv3.OpGet(x.k.Config()), clientv3.OpGet(x.k.DesiredStatus())).Commit()
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	kvs := r.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return errors.New("no config in force (has the controller started?)")
	}
	cfg, err := keys.DecodeConfig(kvs[0].Value)
	if err != nil {
		return fmt.Errorf("%s: %w", x.k.Config(), err)
	}
	var status *weftv1.ConfigStatus
	// badStatus: the answer to the last desired config does not decode
	// (a hand edit); said, not hidden.
	var badStatus string
	if s := r.Responses[1].GetResponseRange().Kvs; len(s) > 0 {
		if status, err = keys.DecodeConfigStatus(s[0].Value); err != nil {
			badStatus = fmt.Sprintf("%s: %v", x.k.DesiredStatus(), err)
		}
	}
	if x.json {
		out := map[string]json.RawMessage{"config": keys.Encode(cfg)}
		if status != nil {
			out["desired_status"] = keys.Encode(status)
		}
		if badStatus != "" {
			out["bad_desired_status"], _ = json.Marshal(badStatus)
		}
		return x.writeJSON(out)
	}
	var pretty bytes.Buffer
	_ = json.Indent(&pretty, keys.Encode(cfg), "", "  ")
	fmt.Fprintln(x.out, pretty.String())
	if status != nil {
		fmt.Fprintf(x.out, "last desired config (revision %d): %s\n", status.DesiredRevision, verdict(status))
	}
	if badStatus != "" {
		fmt.Fprintf(x.out, "last desired config: <bad value: %.300s>\n", text(badStatus))
	}
	return nil
}

func verdict(s *weftv1.ConfigStatus) string {
	if s.Accepted {
		if s.Seq != 0 {
			return fmt.Sprintf("accepted as seq %d", s.Seq)
		}
		return "accepted: " + text(s.Reason)
	}
	return "refused: " + text(s.Reason)
}

func (x *cli) configSet(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("config set", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the controller's answer")
	str := map[string]*string{}
	num := map[string]*uint64{}
	boo := map[string]*bool{}
	for _, f := range []string{"cluster-cidr", "cluster-cidr-v6", "backend", "native-routing-cidr", "native-routing-cidr-v6", "host-routing", "tunnel-datapath"} {
		str[f] = fs.String(f, "", "")
	}
	for _, f := range []string{"node-mask-size", "node-mask-size-v6", "vni", "udp-port", "mtu", "node-grace-seconds", "event-retention"} {
		num[f] = fs.Uint64(f, 0, "")
	}
	for _, f := range []string{"masquerade", "auto-direct-node-routes", "big-tcp", "big-tcp-v6"} {
		boo[f] = fs.Bool(f, false, "")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			configSetUsage(x.out, str, num, boo)
			return nil
		}
		return fmt.Errorf("%w: config set: %v", errUsage, err)
	}
	if *timeout <= 0 {
		// Refused before anything is written: the controller would
		// apply the config while weftctl said it got no answer.
		return fmt.Errorf("%w: config set --timeout %s: want a positive duration", errUsage, *timeout)
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	delete(set, "timeout")
	var cfg *weftv1.ClusterConfig
	switch {
	case fs.NArg() == 1 && len(set) == 0:
		var b []byte
		var err error
		if fs.Arg(0) == "-" {
			b, err = io.ReadAll(x.stdin)
		} else {
			b, err = os.ReadFile(fs.Arg(0))
		}
		if err != nil {
			return fmt.Errorf("read config: %w", err)
		}
		if cfg, err = configfile.Decode(b); err != nil {
			return err
		}
	case fs.NArg() == 0 && len(set) > 0:
		rctx, cancel := x.bounded(ctx)
		r, err := x.c.Get(rctx, x.k.Config())
		cancel()
		if err != nil {
			return fmt.Errorf("read config: %w", err)
		}
		if len(r.Kvs) == 0 {
			return errors.New("no config in force to change; give a whole config file")
		}
		if cfg, err = keys.DecodeConfig(r.Kvs[0].Value); err != nil {
			return err
		}
		for f := range set {
			if err := setField(cfg, f, str, num, boo); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("%w: config set FILE|- or config set --field=value ...", errUsage)
	}
	value := keys.Encode(cfg)
	// proto3 drops a field set to 0; spell out the zeros the operator
	// asked for so the controller answers them instead of defaulting.
	var zeros []string
	for f, v := range num {
		if set[f] && *v == 0 {
			zeros = append(zeros, strings.ReplaceAll(f, "-", "_"))
		}
	}
	if len(zeros) > 0 {
		var m map[string]any
		_ = json.Unmarshal(value, &m)
		for _, z := range zeros {
			m[z] = 0
		}
		value, _ = json.Marshal(m)
	}
	pctx, cancel := x.bounded(ctx)
	put, err := x.c.Put(pctx, x.k.DesiredConfig(), string(value))
	cancel()
	if err != nil {
		return fmt.Errorf("write desired config: %w", err)
	}
	rev := put.Header.Revision
	status, err := x.waitStatus(ctx, rev, *timeout)
	if err != nil {
		return err
	}
	if x.json {
		_ = x.writeJSON(json.RawMessage(keys.Encode(status)))
	} else {
		fmt.Fprintf(x.out, "desired config (revision %d) %s\n", rev, verdict(status))
	}
	if !status.Accepted {
		return errSilent
	}
	return nil
}

// configSetUsage is config set --help: the field flags it takes, from
// the flag sets themselves.
func configSetUsage(w io.Writer, str map[string]*string, num map[string]*uint64, boo map[string]*bool) {
	fmt.Fprint(w, `usage: weftctl config set [--timeout D] FILE|-
         ask for this whole config (JSON or YAML ClusterConfig, proto field names)
       weftctl config set [--timeout D] --FIELD VALUE ...
         change these fields of the config in force (each flag is the
         ClusterConfig field of that name, '-' for '_')
--timeout D waits that long for the controller's answer (default 5s).
fields:
`)
	for _, group := range []struct {
		what  string
		names []string
	}{
		{"a string (CIDR, name)", slices.Sorted(maps.Keys(str))},
		{"a number", slices.Sorted(maps.Keys(num))},
		{"on, or =false for off", slices.Sorted(maps.Keys(boo))},
	} {
		fmt.Fprintf(w, "  %s:\n", group.what)
		for _, n := range group.names {
			fmt.Fprintf(w, "    --%s\n", n)
		}
	}
}

func setField(cfg *weftv1.ClusterConfig, f string, str map[string]*string, num map[string]*uint64, boo map[string]*bool) error {
	u32 := func() (uint32, error) {
		v := *num[f]
		if v > 1<<32-1 {
			return 0, fmt.Errorf("--%s %d is out of range", f, v)
		}
		return uint32(v), nil
	}
	var err error
	switch f {
	case "cluster-cidr":
		cfg.NativeRoutingCidr = followDefault(cfg.NativeRoutingCidr, cfg.ClusterCidr, str["native-routing-cidr"])
		cfg.ClusterCidr = *str[f]
	case "cluster-cidr-v6":
		cfg.NativeRoutingCidrV6 = followDefault(cfg.NativeRoutingCidrV6, cfg.ClusterCidrV6, str["native-routing-cidr-v6"])
		cfg.ClusterCidrV6 = *str[f]
	case "backend":
		cfg.Backend = *str[f]
	case "native-routing-cidr":
		cfg.NativeRoutingCidr = *str[f]
	case "native-routing-cidr-v6":
		cfg.NativeRoutingCidrV6 = *str[f]
	case "host-routing":
		cfg.HostRouting = *str[f]
	case "tunnel-datapath":
		cfg.TunnelDatapath = *str[f]
	case "node-mask-size":
		cfg.NodeMaskSize, err = u32()
	case "node-mask-size-v6":
		cfg.NodeMaskSizeV6, err = u32()
	case "vni":
		cfg.Vni, err = u32()
	case "udp-port":
		cfg.UdpPort, err = u32()
	case "mtu":
		cfg.Mtu, err = u32()
	case "node-grace-seconds":
		cfg.NodeGraceSeconds, err = u32()
	case "event-retention":
		cfg.EventRetention, err = u32()
	case "masquerade":
		cfg.Masquerade = *boo[f]
	case "auto-direct-node-routes":
		cfg.AutoDirectNodeRoutes = *boo[f]
	case "big-tcp":
		cfg.BigTcp = *boo[f]
	case "big-tcp-v6":
		cfg.BigTcpV6 = *boo[f]
	}
	return err
}

// followDefault is the native routing CIDR after its family's cluster CIDR
// changes: one that was the default (equal to the old cluster CIDR) and
// that the command line does not set itself (explicit "" when unset) is
// cleared, so the controller defaults it to the new cluster CIDR, or
// drops it with the family.
func followDefault(native, oldCluster string, explicit *string) string {
	if native == oldCluster && (explicit == nil || *explicit == "") {
		return ""
	}
	return native
}

// waitStatus waits for the controller's answer to desired config
// revision rev.
func (x *cli) waitStatus(ctx context.Context, rev int64, timeout time.Duration) (*weftv1.ConfigStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		r, err := x.c.Get(ctx, x.k.DesiredStatus())
		if err == nil && len(r.Kvs) > 0 {
			if s, err := keys.DecodeConfigStatus(r.Kvs[0].Value); err == nil && s.DesiredRevision >= rev {
				if s.DesiredRevision > rev {
					return nil, fmt.Errorf("desired config revision %d was replaced by %d before the controller answered", rev, s.DesiredRevision)
				}
				return s, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no answer from the controller to desired config revision %d within %s (is it running?)", rev, timeout)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (x *cli) check(ctx context.Context) error {
	rep, err := store.Check(ctx, x.c, x.k)
	if err != nil {
		return err
	}
	if x.json {
		if rep.Problems == nil {
			rep.Problems = []string{}
		}
		_ = x.writeJSON(rep)
	} else {
		trim := "untrimmed"
		if rep.Trimmed {
			trim = "trimmed"
		}
		fmt.Fprintf(x.out, "head %d, %d events retained from seq %d (%s), %d nodes, %d subnet guards\n",
			rep.Head, rep.Events, rep.First, trim, rep.Nodes, rep.Subnets)
		for _, p := range rep.Problems {
			fmt.Fprintln(x.out, "FAIL:", text(p))
		}
		if rep.OK() {
			fmt.Fprintln(x.out, "ok")
		}
	}
	if !rep.OK() {
		return errSilent
	}
	return nil
}

// listedPeers is how many peers n's status lists as unreachable: one
// entry per family a peer fails in.
func listedPeers(n NodeStatus) int {
	peers := map[string]bool{}
	for _, u := range n.UnreachablePeers {
		peers[u.Node] = true
	}
	return len(peers)
}

// unreachableCount is how many peers n cannot reach: the status's count,
// or the listed peers from an agent that reports no count.
func unreachableCount(n NodeStatus) int {
	return max(int(n.UnreachableCount), listedPeers(n))
}
