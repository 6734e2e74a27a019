package etcdconn

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestSplit(t *testing.T) {
	if got := Split(" http://a:1, ,http://b:2,"); !slices.Equal(got, []string{"http://a:1", "http://b:2"}) {
		t.Fatalf("split %q", got)
	}
}

func TestCheckEndpoints(t *testing.T) {
	if err := CheckEndpoints([]string{"http://127.0.0.1:2379", "https://e.example:2379", "unix:///run/etcd.sock", "unixs://s", "10.0.0.1:2379"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		eps  []string
		want string
	}{
		{nil, "no endpoints"},
		{[]string{"http://127.0.0.1:2379", "ftp://127.0.0.1:2379"}, `endpoint "ftp://127.0.0.1:2379": scheme "ftp"`},
		{[]string{"http://"}, `endpoint "http://": no host`},
		{[]string{"10.0.0.1"}, `endpoint "10.0.0.1": address 10.0.0.1: missing port`},
		{[]string{"http://[::1"}, `endpoint "http://[::1"`},
	} {
		if err := CheckEndpoints(tc.eps); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.eps, err, tc.want)
		}
	}
}

func TestBadTLSMaterial(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.pem")
	os.WriteFile(junk, []byte("not a certificate"), 0o600)
	for _, tc := range []struct {
		c    Config
		want string
	}{
		{Config{}, "no endpoints"},
		{Config{Endpoints: []string{"https://127.0.0.1:1"}, CA: filepath.Join(dir, "missing")}, "--etcd-cafile: read etcd CA"},
		{Config{Endpoints: []string{"https://127.0.0.1:1"}, CA: junk}, "--etcd-cafile: read etcd CA " + junk + ": no certificate"},
		{Config{Endpoints: []string{"https://127.0.0.1:1"}, Cert: junk, Key: junk}, "--etcd-certfile/--etcd-keyfile: load etcd client certificate"},
	} {
		if _, err := New(tc.c); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.c, err, tc.want)
		}
	}
}
