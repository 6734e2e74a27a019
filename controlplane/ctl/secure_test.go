package ctl_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/controlplane/controller"
	"github.com/weftnet/weft/controlplane/ctl"
	"github.com/weftnet/weft/internal/etcdconn"
	"github.com/weftnet/weft/internal/pki"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
	"github.com/weftnet/weft/testenv/etcdtest"
)

func weftctl(args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := ctl.Main(ctx, args, strings.NewReader(""), &out, &errOut, func(string) string { return "" })
	return code, out.String(), errOut.String()
}

func TestCertsIssue(t *testing.T) {
	dir := t.TempDir()
	if code, out, errOut := weftctl("certs", "ca", "--dir", dir); code != 0 || !strings.Contains(out, "ca.crt") {
		t.Fatalf("certs ca: %d %q %q", code, out, errOut)
	}
	if code, _, errOut := weftctl("certs", "ca", "--dir", dir); code != ctl.ExitFail || !strings.Contains(errOut, "file exists") {
		t.Errorf("second certs ca: %d %q", code, errOut)
	}
	for _, tc := range []struct {
		args   []string
		file   string
		cn     string
		prefix string
	}{
		{[]string{"node", "n1"}, "weft-node-n1", "weft-node-n1", "/weft"},
		{[]string{"controller"}, "weft-controller", "weft-controller", "/weft"},
		{[]string{"operator"}, "weft-operator", "weft-operator", "/weft"},
		{[]string{"root"}, "root", "root", "/weft"},
		{[]string{"node", "n1"}, "prod_net-node-n1", "prod/net-node-n1", "/prod/net"},
	} {
		args := append([]string{"--prefix", tc.prefix, "certs", "issue"}, tc.args...)
		args = append(args, "--dir", dir) // flags after the name work too
		code, out, errOut := weftctl(args...)
		if code != 0 || !strings.Contains(out, "etcd user "+tc.cn) {
			t.Errorf("%v: %d %q %q", tc.args, code, out, errOut)
			continue
		}
		if cn, err := pki.ReadCommonName(filepath.Join(dir, tc.file+".crt")); err != nil || cn != tc.cn {
			t.Errorf("%v: CN %q, %v; want %q", tc.args, cn, err, tc.cn)
		}
	}
	if code, _, errOut := weftctl("certs", "issue", "--dir", dir, "node", "n1"); code != ctl.ExitFail || !strings.Contains(errOut, "--force") {
		t.Errorf("reissue without --force: %d %q", code, errOut)
	}
	if code, _, _ := weftctl("certs", "issue", "--dir", dir, "--force", "node", "n1"); code != 0 {
		t.Errorf("reissue with --force: %d", code)
	}
	for _, bad := range [][]string{
		{"certs", "issue", "--dir", dir, "node"},
		{"certs", "issue", "--dir", dir, "node", "a/b"},
		{"certs", "issue", "--dir", dir, "server", "etcd"},
		{"certs", "issue", "--dir", dir, "king"},
		{"certs", "issue", "--dir", t.TempDir(), "root"},
	} {
		if code, _, errOut := weftctl(bad...); code == 0 || errOut == "" {
			t.Errorf("%v: exit %d %q", bad, code, errOut)
		}
	}
	// A --hosts entry that is neither an IP address nor a DNS name would
	// be a DNS name no client dials: refused naming the flag, nothing
	// written.
	for _, h := range []string{"10.0.0.300", "10.0.0.10,etcd 0", "10.0.0.0/24", "fe80::1%eth0", "etcd..0", "-etcd", "1.2.3"} {
		code, out, errOut := weftctl("certs", "issue", "--dir", dir, "--hosts", h, "server", "bad")
		if code != ctl.ExitUsage || !strings.Contains(errOut, "--hosts: ") || out != "" {
			t.Errorf("--hosts %q: exit %d, out %q, err %.200q; want a usage error naming --hosts", h, code, out, errOut)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "bad.crt")); !os.IsNotExist(err) {
		t.Errorf("a refused --hosts wrote bad.crt: %v", err)
	}
	// The server NAME names the files: one that is no plain name (a
	// path, ".", "..", a hidden file) is a usage error, nothing written.
	for _, name := range []string{"a/b", "/", ".", "..", ".etcd", "etcd 0", "../etcd"} {
		code, out, errOut := weftctl("certs", "issue", "--dir", dir, "--hosts", "10.0.0.10", "server", name)
		if code != ctl.ExitUsage || !strings.Contains(errOut, fmt.Sprintf("certs issue server %q", name)) || out != "" {
			t.Errorf("server %q: exit %d, out %q, err %.200q; want a usage error naming it", name, code, out, errOut)
		}
	}
	if files, _ := filepath.Glob(filepath.Join(dir, ".*")); len(files) > 0 {
		t.Errorf("refused server names wrote %v", files)
	}
	if _, err := os.Stat(filepath.Join(dir, "b.crt")); !os.IsNotExist(err) {
		t.Errorf("server a/b wrote b.crt: %v", err)
	}
	code, out, errOut := weftctl("certs", "issue", "--dir", dir, "--hosts", "10.0.0.10,etcd-0,fd00::10,*.etcd.example.com,etcd_1.local.", "server", "etcd-0")
	if code != 0 || !strings.Contains(out, "serving certificate for 10.0.0.10, etcd-0, fd00::10, *.etcd.example.com, etcd_1.local.") {
		t.Errorf("server: %d %q %q", code, out, errOut)
	}
}

// TestAuthVerbs: weftctl sets auth up on a TLS etcd with certificates it
// issued itself, twice, and refuses and explains what it should.
func TestAuthVerbs(t *testing.T) {
	s := etcdtest.NewSecure(t)
	dir := s.Dir // its CA: weftctl issues from it
	for _, who := range [][]string{{"root"}, {"operator"}, {"reader"}, {"controller"}, {"node", "n1"}} {
		if code, _, errOut := weftctl(append([]string{"certs", "issue", "--dir", dir}, who...)...); code != 0 {
			t.Fatalf("issue %v: %s", who, errOut)
		}
	}
	as := func(user string, args ...string) (int, string, string) {
		f := pki.FilesIn(dir, user)
		return weftctl(append([]string{"--etcd-endpoints", s.Endpoints[0], "--etcd-cafile", s.CAFile,
			"--etcd-certfile", f.Cert, "--etcd-keyfile", f.Key, "--timeout", "5s"}, args...)...)
	}
	code, out, errOut := as("root", "auth", "setup")
	if code != 0 || !strings.Contains(out, "auth: enabled\n") || !strings.Contains(out, "user weft-operator: created") {
		t.Fatalf("setup: %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = as("root", "auth", "setup")
	if code != 0 || !strings.Contains(out, "nothing changed") || strings.Contains(out, "created") {
		t.Fatalf("second setup: %d\n%s%s", code, out, errOut)
	}
	// A controller with only its role writes the log; the read-only role
	// is enough for every inspecting verb.
	cc, err := etcdconnFor(s, dir, "weft-controller")
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctlr := controller.New(controller.Options{Client: cc, Layout: k, ElectionTTL: time.Second,
		Initial: &weftv1.ClusterConfig{ClusterCidr: "10.244.0.0/16"}, Batch: time.Millisecond})
	cctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = ctlr.Run(cctx) }()
	defer func() { cancel(); <-done }()
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if code, out, _ := as("weft-reader", "events"); code == 0 && strings.Contains(out, "ConfigChanged") {
			break
		}
		if time.Now().After(end) {
			t.Fatal("the controller wrote no config under auth")
		}
	}
	for _, verb := range [][]string{{"nodes"}, {"events"}, {"status"}, {"check"}, {"config", "get"}} {
		if code, out, errOut := as("weft-reader", verb...); code != 0 {
			t.Errorf("%v as the reader: %d %q %q", verb, code, out, errOut)
		}
	}
	if code, _, errOut := as("weft-reader", "config", "set", "--mtu", "1400"); code != ctl.ExitFail || !strings.Contains(errOut, `etcd user "weft-reader"`) {
		t.Errorf("config set as the reader: %d %q", code, errOut)
	}
	code, _, errOut = as("weft-operator", "auth", "setup")
	if code != ctl.ExitFail || !strings.Contains(errOut, `etcd user "weft-operator"`) || !strings.Contains(errOut, "CN root") {
		t.Errorf("setup as the operator: %d %q", code, errOut)
	}
	// n1 was not in the store at setup: its user comes with add-node.
	code, _, errOut = as("weft-node-n1", "nodes")
	if code != ctl.ExitFail || !strings.Contains(errOut, "permission denied") {
		t.Errorf("n1 before add-node: %d %q", code, errOut)
	}
	if code, out, errOut := as("root", "auth", "add-node", "n1"); code != 0 || !strings.Contains(out, "role weft-node-n1: created") {
		t.Fatalf("add-node: %d %q %q", code, out, errOut)
	}
	if code, out, errOut := as("weft-node-n1", "nodes"); code != 0 {
		t.Errorf("n1 lists nodes: %d %q %q", code, out, errOut)
	}
	// A node reads no statuses: weftctl status is for operators.
	if code, _, errOut := as("weft-node-n1", "status"); code != ctl.ExitFail || !strings.Contains(errOut, `etcd user "weft-node-n1"`) {
		t.Errorf("n1 status: %d %q", code, errOut)
	}
	if code, out, _ := as("root", "auth", "remove-node", "n1"); code != 0 || !strings.Contains(out, "user weft-node-n1: deleted") {
		t.Errorf("remove-node: %d %q", code, out)
	}
	if code, out, _ := as("root", "auth", "remove-node", "n1"); code != 0 || !strings.Contains(out, "nothing changed") {
		t.Errorf("second remove-node: %d %q", code, out)
	}

	// No certificate: weftctl gives up within --timeout and says TLS.
	start := time.Now()
	code, _, errOut = weftctl("--etcd-endpoints", s.Endpoints[0], "--etcd-cafile", s.CAFile, "--timeout", "2s", "nodes")
	took := time.Since(start)
	if code != ctl.ExitFail || !strings.Contains(errOut, "TLS: etcd requires a client certificate") || !strings.Contains(errOut, s.Endpoints[0]) {
		t.Errorf("without a certificate: %d %q", code, errOut)
	}
	// Not a speed target: without --timeout it ran until the caller's
	// 30 s context ended it (it waited for etcd forever on its own).
	if took > 20*time.Second {
		t.Errorf("without a certificate weftctl took %v with --timeout 2s", took)
	}
}

func etcdconnFor(s *etcdtest.Secure, dir, user string) (*clientv3.Client, error) {
	f := pki.FilesIn(dir, user)
	return etcdconn.New(etcdconn.Config{Endpoints: s.Endpoints, CA: s.CAFile, Cert: f.Cert, Key: f.Key})
}
