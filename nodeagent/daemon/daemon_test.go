package daemon

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/goleak"

	"github.com/weftnet/weft/bpf"
	"github.com/weftnet/weft/internal/pki"
	"github.com/weftnet/weft/testenv/netnstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestFlagsEnvAndValidate(t *testing.T) {
	t.Setenv("WEFT_ETCD_ENDPOINTS", "http://10.0.0.1:2379,http://10.0.0.2:2379")
	t.Setenv("WEFT_NODE_NAME", "from-env")
	t.Setenv("WEFT_RECONCILE_INTERVAL", "3s")
	t.Setenv("WEFT_HOST_ROUTING", "stack")
	t.Setenv("WEFT_TUNNEL_DATAPATH", "bpf")
	o, err := Parse([]string{"--node-name", "from-flag", "--underlay", "eth1"}, os.Getenv)
	if err != nil {
		t.Fatal(err)
	}
	if o.NodeName != "from-flag" || len(o.Endpoints()) != 2 || o.ReconcileInterval != 3*time.Second || o.Underlay != "eth1" ||
		o.HostRouting != "stack" || o.TunnelDatapath != "bpf" {
		t.Fatalf("options = %+v", o)
	}
	if err := o.Check(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]string{
		{"--node-name", "a/b"},
		{"--lease-ttl", "1"},
		{"--lease-ttl", "9000000001"},
		{"--subnet-file", "run/weft/subnet.env"},
		{"--etcd-endpoints", ","},
		{"--etcd-endpoints", "ftp://10.0.0.1:2379"},
		{"--etcd-endpoints", "http://10.0.0.1:2379,10.0.0.2"},
		{"--log-level", "loud"},
		{"--underlay", "not an interface"},
		{"--underlay", "127.0.0.1"},
		{"--underlay", "0.0.0.0"},
		{"--underlay", "::"},
		{"--underlay", "224.0.0.1"},
		{"--underlay", "169.254.0.9"},
		{"--underlay", "fe80::1%eth0"},
		{"--bpffs-dir", "sys/fs/bpf/weft"},
		{"--etcd-certfile", "x"},
		{"--host-routing", "legacy"},
		{"--tunnel-datapath", "xdp"},
		{"--bgp-speaker", "/nonexistent/weft-bgp"},
		{"--bgp-speaker", "/"},
		{"--prefix", "/"},
		{"--prefix", "/weft cluster"},
		{"--metrics-addr", "127.0.0.1:70000"},
		{"--reconcile-interval", "0"},
		{"--reconcile-interval", "1ms"},
		{"--reconcile-interval", "-1s"},
		// AS numbers no BGP speaker can use (0 is the cluster's: fine).
		{"--asn", "23456"},
		{"--asn", "65535"},
		{"--asn", "4294967295"},
		{"--asn", "4294967296"},
		// The TLS files are read by Check (and so by --validate).
		{"--etcd-cafile", "/nonexistent/ca.crt"},
		{"--etcd-cafile", "/dev/null"},
		{"--etcd-certfile", "/nonexistent/agent.crt", "--etcd-keyfile", "/nonexistent/agent.key"},
	} {
		o, err := Parse(append([]string{"--node-name", "n1"}, bad...), os.Getenv)
		if err == nil {
			err = o.Check()
		}
		if err == nil || !strings.Contains(err.Error(), strings.TrimPrefix(bad[0], "-")) {
			t.Errorf("%v: err = %v", bad, err)
		}
	}
	for _, ok := range [][]string{{"--underlay", "192.0.2.7"}, {"--underlay", "2001:db8::7"}, {"--underlay", "eth1"}, {"--bpffs-dir", ""}, {"--bpffs-dir", "/sys/fs/bpf/n1"}} {
		o, err := Parse(append([]string{"--node-name", "n1"}, ok...), os.Getenv)
		if err == nil {
			err = o.Check()
		}
		if err != nil {
			t.Errorf("%v: %v", ok, err)
		}
	}
	for _, asn := range []string{"0", "64512", "65536", "4294967294"} {
		o, err := Parse([]string{"--node-name", "n1", "--asn", asn}, os.Getenv)
		if err == nil {
			err = o.Check()
		}
		if err != nil {
			t.Errorf("--asn %s: %v", asn, err)
		}
	}
	// --subnet-file names a file the agent replaces and --teardown
	// deletes: one that is something else is refused.
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, path := range []string{write("hosts", "127.0.0.1 localhost\n# FLANNEL_SUBNET=10.0.0.1/24\n"), dir} {
		o, err := Parse([]string{"--node-name", "n1", "--subnet-file", path}, os.Getenv)
		if err == nil {
			err = o.Check()
		}
		if err == nil || !strings.HasPrefix(err.Error(), "--subnet-file: "+path) {
			t.Errorf("--subnet-file %s: %v", path, err)
		}
	}
	for _, path := range []string{filepath.Join(dir, "absent.env"), write("empty.env", ""),
		write("subnet.env", "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\n"),
		write("v6.env", "# weft\nFLANNEL_IPV6_SUBNET=fd00::1/64\n")} {
		o, err := Parse([]string{"--node-name", "n1", "--subnet-file", path}, os.Getenv)
		if err == nil {
			err = o.Check()
		}
		if err != nil {
			t.Errorf("--subnet-file %s: %v", path, err)
		}
	}
	t.Setenv("WEFT_LEASE_TTL", "ten")
	if _, err := Parse(nil, os.Getenv); err == nil || !strings.Contains(err.Error(), "WEFT_LEASE_TTL") {
		t.Fatalf("bad env: %v", err)
	}
}

// TestCheckIdentity: an agent started with another node's certificate
// says so, naming both users and the fix.
func TestCheckIdentity(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.NewCA("test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, cn := range []string{"weft-node-n1", "weft-node-n2"} {
		p, err := ca.Issue(pki.Request{CommonName: cn})
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Write(pki.FilesIn(dir, cn), false); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct{ cert, want string }{
		{"weft-node-n2", `want_cn=weft-node-n1 fix="weftctl certs issue node n1; weftctl auth add-node n1"`},
		{"weft-node-n1", "etcd identity: user=weft-node-n1"},
	} {
		var out bytes.Buffer
		log := hclog.New(&hclog.LoggerOptions{Output: &out})
		checkIdentity(&Options{NodeName: "n1", Prefix: "/weft", EtcdCertFile: pki.FilesIn(dir, tc.cert).Cert}, log)
		if !strings.Contains(out.String(), tc.want) {
			t.Errorf("certificate %s: logged %q, want %q", tc.cert, out.String(), tc.want)
		}
	}
}

// TestRunStopsWhenTheDatapathCannotOpen: the datapath opens while the
// agent already runs; one that cannot open (a pin directory outside
// bpffs) stops the agent, and Run returns the open's error.
func TestRunStopsWhenTheDatapathCannotOpen(t *testing.T) {
	if _, err := os.Stat("/sys/fs/bpf"); err != nil {
		t.Skipf("needs /sys/fs/bpf: %v", err)
	}
	o, err := Parse([]string{"--node-name", "n1", "--bpffs-dir", t.TempDir(), "--etcd-endpoints", "http://127.0.0.1:1",
		"--metrics-addr", "", "--subnet-file", ""}, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	err = Run(context.Background(), o, hclog.NewNullLogger())
	if err == nil || !strings.Contains(err.Error(), "open datapath") || !strings.Contains(err.Error(), "not on a bpf filesystem") {
		t.Fatalf("Run = %v, want the open's error", err)
	}
}

// TestNodeReadsDoNotWaitForTheOpen: while the programs load, what the
// registration needs (underlay, capabilities, overlay MAC) comes from the
// node's bpf.Host, so the agent registers without waiting for the
// verifier. Here the open never finishes; without the Host every read
// would wait for it (the guard below turns that hang into a failure).
func TestNodeReadsDoNotWaitForTheOpen(t *testing.T) {
	netnstest.RequireRoot(t)
	ns := netnstest.New(t, netnstest.Prefix()+"-open")
	h, err := bpf.OpenHost(bpf.Config{NetNS: ns.Path()})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	o := &openingDatapath{host: h, hostDone: make(chan struct{}), done: make(chan struct{})} // never opens
	close(o.hostDone)
	done := make(chan struct{})
	var caps []string
	var macErr error
	go func() {
		defer close(done)
		caps = o.Capabilities()
		_, macErr = o.VTEPMAC()
		o.Underlay() // no default route in a fresh namespace: an error, but an answer
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("node reads still waiting for the datapath's open after 30 s")
	}
	if !slices.Contains(caps, bpf.CapVXLAN) || macErr != nil {
		t.Fatalf("capabilities %v, VTEPMAC error %v", caps, macErr)
	}
}
