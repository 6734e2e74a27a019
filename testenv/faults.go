package testenv

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"time"
)

// Fault helpers: what a chaos run (testenv/chaos) does to a cluster beyond
// Kill, RestartAgent, KillController and StopEtcd.

// blockTable is the nftables table BlockEtcd adds in a node namespace.
const blockTable = "weft_testenv_block"

// BlockEtcd drops every packet between node i and the etcd members' client
// ports (both ways, nftables in the node's namespace), as a partition
// between that machine and etcd would; UnblockEtcd lifts it. Pod traffic
// and the underlay between nodes are untouched.
func (c *Cluster) BlockEtcd(i int) error {
	n := c.Node(i)
	if n == nil {
		return fmt.Errorf("block etcd from node %d: no such node", i)
	}
	var ports []string
	for m := 0; m < max(1, len(c.Etcd)); m++ {
		ports = append(ports, fmt.Sprint(memberClientPort(m)))
	}
	set := "{ " + strings.Join(ports, ", ") + " }"
	rules := fmt.Sprintf(`table inet %[1]s {
	chain out {
		type filter hook output priority 0; policy accept;
		ip daddr %[2]s tcp dport %[3]s drop
	}
	chain in {
		type filter hook input priority 0; policy accept;
		ip saddr %[2]s tcp sport %[3]s drop
	}
}
`, blockTable, ctlIP, set)
	if err := nft(n.NS, rules); err != nil {
		return fmt.Errorf("block etcd from node %s: %w", n.Name, err)
	}
	return nil
}

// UnblockEtcd removes what BlockEtcd added (nothing there is fine).
func (c *Cluster) UnblockEtcd(i int) error {
	n := c.Node(i)
	if n == nil {
		return fmt.Errorf("unblock etcd from node %d: no such node", i)
	}
	// Declaring the table first makes the delete succeed when it is gone.
	if err := nft(n.NS, fmt.Sprintf("table inet %[1]s\ndelete table inet %[1]s\n", blockTable)); err != nil {
		return fmt.Errorf("unblock etcd from node %s: %w", n.Name, err)
	}
	return nil
}

// nft runs `nft -f -` with rules inside namespace ns.
func nft(ns, rules string) error {
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := InNS(ns, cmd.Run); err != nil {
		return fmt.Errorf("nft: %w: %s", err, strings.TrimSpace(out.String()))
	}
	return nil
}

// ReachEtcd reports whether node i's namespace can reach etcd right now:
// a TLS handshake with the node's own certificate (a plain TCP connect on
// a cluster without TLS) to some member succeeds within timeout. It is
// evidence of the path between the machine and etcd, independent of the
// agent.
func (c *Cluster) ReachEtcd(i int, timeout time.Duration) error {
	n := c.Node(i)
	if n == nil {
		return fmt.Errorf("reach etcd from node %d: no such node", i)
	}
	var cfg *tls.Config
	if c.pki != nil {
		f := c.Identity(c.Names().Node(n.Name))
		cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			return fmt.Errorf("reach etcd from node %s: %w", n.Name, err)
		}
		ca, err := os.ReadFile(c.pki.CAFile)
		if err != nil {
			return fmt.Errorf("reach etcd from node %s: %w", n.Name, err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(ca)
		cfg = &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: ctlIP}
	}
	var errs []error
	for _, ep := range c.NodeEndpoints() {
		_, hostport, _ := strings.Cut(ep, "://")
		err := InNS(n.NS, func() error {
			d := &net.Dialer{Timeout: timeout}
			if cfg == nil {
				conn, err := d.Dial("tcp", hostport)
				if err == nil {
					conn.Close()
				}
				return err
			}
			conn, err := tls.DialWithDialer(d, "tcp", hostport, cfg)
			if err == nil {
				conn.Close()
			}
			return err
		})
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	return fmt.Errorf("reach etcd from node %s: %w", n.Name, errors.Join(errs...))
}

// EtcdLeader returns the index of the external etcd member that is the
// raft leader.
func (c *Cluster) EtcdLeader(ctx context.Context) (int, error) {
	if c.Opts.Etcd != EtcdExternal {
		return -1, errors.New("etcd leader: the embedded etcd has one member")
	}
	cl, err := c.Client()
	if err != nil {
		return -1, err
	}
	defer cl.Close()
	var errs []error
	for m, ep := range c.ClientEndpoints() {
		if !c.Etcd[m].Running() {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := cl.Status(sctx, ep)
		cancel()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if st.Leader != 0 && st.Leader == st.Header.GetMemberId() {
			return m, nil
		}
	}
	return -1, fmt.Errorf("etcd leader: no member says it leads: %w", errors.Join(errs...))
}

// Leave takes node i out the way a machine that is shut down leaves: its
// agent stops (SIGTERM; the lease is not revoked and runs out) and its
// pods are detached. The node namespace, the pod namespaces and their
// echo servers stay, for Rejoin.
func (c *Cluster) Leave(ctx context.Context, i int) error {
	n := c.Node(i)
	if n == nil || n.Agent == nil {
		return fmt.Errorf("leave node %d: no such node with an agent", i)
	}
	var errs []error
	errs = append(errs, n.Agent.Stop(10*time.Second))
	for _, p := range n.Pods {
		if p.Addr.IsValid() {
			errs = append(errs, c.Opts.Attacher.Detach(ctx, n.NS, p.NS, p.Name, n.SubnetFile))
			p.Addr = netip.Addr{}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("leave node %s: %w", n.Name, err)
	}
	return nil
}

// Rejoin brings back a node that left: its agent starts with the same
// name, and once the controller has given the node a pod CIDR (the old one
// is gone if the node was removed meanwhile) and the agent has written it
// to the subnet file, the pods are attached again with addresses from it.
func (c *Cluster) Rejoin(ctx context.Context, i int) error {
	n := c.Node(i)
	if n == nil || n.Agent == nil {
		return fmt.Errorf("rejoin node %d: no such node with an agent", i)
	}
	if err := n.Agent.start(); err != nil {
		return fmt.Errorf("rejoin node %s: %w", n.Name, err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if err := c.leaseWritten(ctx, n); err == nil {
			break
		} else if time.Now().After(deadline) {
			return fmt.Errorf("rejoin node %s: %w", n.Name, err)
		}
		if !n.Agent.Running() {
			return fmt.Errorf("rejoin node %s: agent exited (log %s)", n.Name, n.Agent.Log)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	if err := c.unrouteOnRouter(n); err != nil {
		return err
	}
	if err := c.routeOnRouter(n); err != nil {
		return err
	}
	for _, p := range n.Pods {
		addrs, err := c.Opts.Attacher.Attach(ctx, n.NS, p.NS, p.Name, n.SubnetFile)
		if err != nil {
			return fmt.Errorf("rejoin node %s: %w", n.Name, err)
		}
		if len(addrs) == 0 {
			return fmt.Errorf("rejoin node %s: pod %s got no address", n.Name, p.Name)
		}
		p.Addr, p.Addrs = addrs[0], addrs
	}
	return nil
}

// leaseWritten succeeds once the projection holds node n and its subnet
// file carries the node's pod CIDR from it.
func (c *Cluster) leaseWritten(ctx context.Context, n *Node) error {
	nodes, err := c.StoreNodes(ctx)
	if err != nil {
		return err
	}
	sn := nodes[n.Name]
	if sn == nil {
		return errors.New("not in /weft/nodes yet")
	}
	env, err := ReadSubnetEnv(n.SubnetFile)
	if err != nil {
		return err
	}
	// The file's first pod CIDR (IPv4 unless the cluster is IPv6-only).
	if file := env.PodCIDRs(); len(file) > 0 {
		for _, s := range sn.GetPodCidrs() {
			if p, err := netip.ParsePrefix(s); err == nil && p.Masked() == file[0] {
				return nil
			}
		}
	}
	return fmt.Errorf("subnet file has %v, the projection %v", env.PodCIDRs(), sn.GetPodCidrs())
}

// Stopped reports whether the process is stopped by a signal (SIGSTOP):
// state T in /proc/<pid>/stat.
func (p *Proc) Stopped() bool {
	pid := p.PID()
	if pid == 0 {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) state ...: comm may hold spaces and parentheses.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return false
	}
	return s[i+2] == 'T' || s[i+2] == 't'
}
