package testenv

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/weftnet/weft/internal/etcdauth"
	"github.com/weftnet/weft/internal/etcdconn"
	"github.com/weftnet/weft/internal/pki"
	"github.com/weftnet/weft/proto/keys"
)

// Secure clusters (Options.Secure) run etcd the way docs/controlplane.md
// tells an operator to: TLS on every client URL (https:// for the
// namespaces, unixs:// for the root namespace), client certificates
// required, etcd auth on (`weftctl auth setup` as root), and one client
// certificate per identity made with `internal/pki` (what `weftctl certs`
// uses), its CN the etcd user: the controller, the operator (Weftctl,
// EtcdctlLine), root (Client, auth changes) and each node (its agent).

// securePKI is the run's certificates, under RunDir/pki.
type securePKI struct {
	dir    string
	ca     *pki.CA
	CAFile string
	server pki.Files // etcd's serving certificate (every member)
}

func (c *Cluster) pkiDir() string { return filepath.Join(c.RunDir, "pki") }

// makePKI makes the CA, etcd's serving certificate and the cluster's
// identities (root, controller, operator, reader); nodes get theirs in
// addNode.
func (c *Cluster) makePKI() error {
	ca, err := pki.NewCA("weft-testenv "+c.Prefix, 0)
	if err != nil {
		return err
	}
	p := &securePKI{dir: c.pkiDir(), ca: ca}
	caFiles := pki.FilesIn(p.dir, "ca")
	if err := ca.Write(caFiles, false); err != nil {
		return err
	}
	p.CAFile = caFiles.Cert
	// Clients verify the name they dial: the TCP address, and for a unix
	// socket its file name (weft's etcd client names unixs:// servers so)
	// or its whole path (Debian's etcdctl 3.4 does; x509 matches such a
	// name exactly).
	hosts := []string{ctlIP, ctlIP6().String(), "127.0.0.1", "::1", "localhost"}
	for m := 0; m < max(1, c.Opts.EtcdMembers); m++ {
		hosts = append(hosts, filepath.Base(c.EtcdSocket(m)), c.EtcdSocket(m))
	}
	srv, err := ca.Issue(pki.Request{CommonName: "etcd", Hosts: hosts})
	if err != nil {
		return err
	}
	p.server = pki.FilesIn(p.dir, "etcd-server")
	if err := srv.Write(p.server, false); err != nil {
		return err
	}
	c.pki = p
	n := c.Names()
	for _, user := range []string{etcdauth.Root, n.Controller(), n.Operator(), n.Reader()} {
		if _, err := c.issue(user); err != nil {
			return err
		}
	}
	return nil
}

// issue writes a client certificate for etcd user (CN user).
func (c *Cluster) issue(user string) (pki.Files, error) {
	p, err := c.pki.ca.Issue(pki.Request{CommonName: user})
	if err != nil {
		return pki.Files{}, err
	}
	f := c.Identity(user)
	return f, p.Write(f, true)
}

// Names are the etcd users and roles of the cluster's prefix.
func (c *Cluster) Names() etcdauth.Names { return etcdauth.NamesFor(keys.New(weftPrefix)) }

// CAFile is the CA of a secure cluster's certificates ("" otherwise).
func (c *Cluster) CAFile() string {
	if c.pki == nil {
		return ""
	}
	return c.pki.CAFile
}

// Identity is where the client certificate of etcd user lives in a
// secure cluster (issued for root, the controller, the operator, the
// reader and each node; IssueIdentity makes others).
func (c *Cluster) Identity(user string) pki.Files {
	return pki.FilesIn(c.pkiDir(), strings.ReplaceAll(user, "/", "_"))
}

// IssueIdentity makes a client certificate for any CN, e.g. one that is
// no etcd user, for tests of what etcd refuses.
func (c *Cluster) IssueIdentity(user string) (pki.Files, error) {
	if c.pki == nil {
		return pki.Files{}, fmt.Errorf("issue %s: the cluster is not secure", user)
	}
	return c.issue(user)
}

// EtcdConfig is how user reaches the store from the root namespace
// (unixs:// with user's certificate in a secure cluster; the plain unix
// sockets otherwise, user ignored).
func (c *Cluster) EtcdConfig(user string) etcdconn.Config {
	cfg := etcdconn.Config{Endpoints: c.ClientEndpoints()}
	if c.pki != nil {
		f := c.Identity(user)
		cfg.CA, cfg.Cert, cfg.Key = c.pki.CAFile, f.Cert, f.Key
	}
	return cfg
}

// tlsFlags are the --etcd-cafile/--etcd-certfile/--etcd-keyfile of user
// (nothing unless secure).
func (c *Cluster) tlsFlags(user string) []string {
	if c.pki == nil {
		return nil
	}
	f := c.Identity(user)
	return []string{"--etcd-cafile", c.pki.CAFile, "--etcd-certfile", f.Cert, "--etcd-keyfile", f.Key}
}

// setupAuth turns etcd auth on with weftctl, as root.
func (c *Cluster) setupAuth(ctx context.Context) error {
	out, err := c.WeftctlAs(ctx, etcdauth.Root, "auth", "setup")
	if err != nil {
		return err
	}
	c.log.Info("etcd auth set up", "weftctl", strings.TrimSpace(out))
	return nil
}

// addNodeIdentity issues node n's certificate and adds its etcd user and
// role, before its agent starts.
func (c *Cluster) addNodeIdentity(ctx context.Context, n *Node) error {
	if _, err := c.issue(c.Names().Node(n.Name)); err != nil {
		return err
	}
	_, err := c.WeftctlAs(ctx, etcdauth.Root, "auth", "add-node", n.Name)
	return err
}
