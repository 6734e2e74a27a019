package ctl

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/internal/etcdauth"
	"github.com/weftnet/weft/internal/etcdconn"
	"github.com/weftnet/weft/internal/pki"
	"github.com/weftnet/weft/proto/keys"
)

// DefaultPKIDir is where `certs` keeps the CA and the certificates it
// issues, relative to the working directory.
const DefaultPKIDir = "weft-pki"

// parseInterleaved parses fs's flags wherever they stand among args and
// returns the other arguments in order.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// certs issues certificates from a CA in --dir (no etcd involved).
func (x *cli) certs(args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: certs ca|issue", errUsage)
	}
	fs := flag.NewFlagSet("certs", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	dir := fs.String("dir", DefaultPKIDir, "directory of the CA and the issued files")
	days := fs.Int("days", 0, "validity in days (default: CA 3650, certificates 365)")
	force := fs.Bool("force", false, "replace existing files")
	hosts := fs.String("hosts", "", "comma-separated IPs and DNS names (server certificates)")
	pos, err := parseInterleaved(fs, args[1:])
	if err != nil {
		return fmt.Errorf("%w: certs %s: %v", errUsage, args[0], err)
	}
	if *days < 0 {
		return fmt.Errorf("%w: --days %d is negative", errUsage, *days)
	}
	validity := time.Duration(*days) * 24 * time.Hour
	caFiles := pki.FilesIn(*dir, "ca")
	switch args[0] {
	case "ca":
		if len(pos) > 0 {
			return fmt.Errorf("%w: certs ca takes no arguments", errUsage)
		}
		ca, err := pki.NewCA("weft etcd CA", validity)
		if err != nil {
			return err
		}
		if err := ca.Write(caFiles, *force); err != nil {
			if errors.Is(err, pki.ErrExists) {
				return fmt.Errorf("%w (every certificate it issued depends on it; --force replaces it)", err)
			}
			return err
		}
		fmt.Fprintf(x.out, "wrote %s and %s: CA %q, valid until %s; keep the key off the nodes\n",
			caFiles.Cert, caFiles.Key, ca.Cert.Subject.CommonName, ca.Cert.NotAfter.UTC().Format(time.DateOnly))
		return nil
	case "issue":
	default:
		return fmt.Errorf("%w: certs %q", errUsage, args[0])
	}
	cn, file, hostList, err := x.certSubject(pos, *hosts)
	if err != nil {
		return err
	}
	ca, err := pki.LoadCA(caFiles.Cert, caFiles.Key)
	if err != nil {
		return fmt.Errorf("%w (make one with: weftctl certs ca --dir %s)", err, *dir)
	}
	p, err := ca.Issue(pki.Request{CommonName: cn, Hosts: hostList, Validity: validity})
	if err != nil {
		return err
	}
	f := pki.FilesIn(*dir, file)
	if err := p.Write(f, *force); err != nil {
		if errors.Is(err, pki.ErrExists) {
			return fmt.Errorf("%w (--force replaces it)", err)
		}
		return err
	}
	cert, _ := pki.ParseCertificate(p.Cert)
	what := "client certificate for etcd user " + cn
	if len(hostList) > 0 {
		what = "serving certificate for " + strings.Join(hostList, ", ")
	}
	fmt.Fprintf(x.out, "wrote %s and %s: %s, valid until %s, signed by %s\n",
		f.Cert, f.Key, what, cert.NotAfter.UTC().Format(time.DateOnly), caFiles.Cert)
	return nil
}

// certSubject is the CN, file name and hosts of `certs issue WHO [NAME]`.
func (x *cli) certSubject(pos []string, hosts string) (cn, file string, hostList []string, err error) {
	n := etcdauth.NamesFor(x.k)
	if len(pos) == 0 {
		return "", "", nil, fmt.Errorf("%w: certs issue controller|operator|reader|root|node NAME|server NAME", errUsage)
	}
	who, rest := pos[0], pos[1:]
	one := func() (string, error) {
		if len(rest) != 1 {
			return "", fmt.Errorf("%w: certs issue %s NAME", errUsage, who)
		}
		return rest[0], nil
	}
	switch who {
	case "controller", "operator", "reader", "root":
		if len(rest) > 0 {
			return "", "", nil, fmt.Errorf("%w: certs issue %s takes no name", errUsage, who)
		}
		cn = map[string]string{"controller": n.Controller(), "operator": n.Operator(), "reader": n.Reader(), "root": etcdauth.Root}[who]
	case "node":
		name, err := one()
		if err != nil {
			return "", "", nil, err
		}
		if err := keys.ValidName(name); err != nil {
			return "", "", nil, fmt.Errorf("node name %q: %w", name, err)
		}
		cn = n.Node(name)
	case "server":
		name, err := one()
		if err != nil {
			return "", "", nil, err
		}
		// NAME is the CN and the files' name in --dir: "a/b" was
		// written as b.crt, "/" and ".." as the hidden .crt and ...crt.
		if err := keys.ValidName(name); err != nil || strings.HasPrefix(name, ".") {
			return "", "", nil, fmt.Errorf("%w: certs issue server %q: want a name of letters, digits, '-', '_' and '.', not starting with '.' (it names the files in --dir)", errUsage, name)
		}
		hostList = etcdconn.Split(hosts)
		if len(hostList) == 0 {
			return "", "", nil, fmt.Errorf("%w: certs issue server needs --hosts (the IPs and names clients dial)", errUsage)
		}
		for _, h := range hostList {
			if err := pki.CheckHost(h); err != nil {
				return "", "", nil, fmt.Errorf("%w: --hosts: %v", errUsage, err)
			}
		}
		return name, name, hostList, nil
	default:
		return "", "", nil, fmt.Errorf("%w: certs issue %q: want controller, operator, reader, root, node or server", errUsage, who)
	}
	if hosts != "" {
		return "", "", nil, fmt.Errorf("%w: --hosts is for server certificates", errUsage)
	}
	return cn, strings.ReplaceAll(cn, "/", "_"), nil, nil
}

// auth changes etcd's users and roles (internal/etcdauth).
func (x *cli) auth(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: auth setup|add-node NAME|remove-node NAME", errUsage)
	}
	var rep etcdauth.Report
	var err error
	switch args[0] {
	case "setup":
		if len(args) != 1 {
			return fmt.Errorf("%w: auth setup takes no arguments", errUsage)
		}
		var nodes []string
		if nodes, err = x.knownNodes(ctx); err != nil {
			break
		}
		rep, err = etcdauth.Setup(ctx, x.c, x.k, nodes)
	case "add-node", "remove-node":
		if len(args) != 2 {
			return fmt.Errorf("%w: auth %s NAME", errUsage, args[0])
		}
		if args[0] == "add-node" {
			rep, err = etcdauth.AddNode(ctx, x.c, x.k, args[1])
		} else {
			rep, err = etcdauth.RemoveNode(ctx, x.c, x.k, args[1])
		}
	default:
		return fmt.Errorf("%w: auth %q", errUsage, args[0])
	}
	for _, c := range rep {
		fmt.Fprintln(x.out, c)
	}
	if err != nil {
		if etcdconnDenied(err) {
			return fmt.Errorf("%w (changing etcd's users and roles needs etcd's root user once auth is on: a certificate with CN root, from weftctl certs issue root)", err)
		}
		return err
	}
	switch {
	case !rep.Changed():
		fmt.Fprintln(x.out, "nothing changed: etcd already had all of it")
	case args[0] == "remove-node":
		fmt.Fprintf(x.out, "node %s can no longer write to etcd and its registration is gone; the controller removes it after the grace period (node_grace_seconds)\n", args[1])
	}
	return nil
}

// knownNodes are the names of the projection's nodes and of the
// registrations (keys only: a value the controller would refuse does not
// stop setup), so that turning auth on keeps every running agent in.
func (x *cli) knownNodes(ctx context.Context) ([]string, error) {
	names := map[string]bool{}
	for _, p := range []string{x.k.Nodes(), x.k.Registrations()} {
		r, err := x.c.Get(ctx, p, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", p, err)
		}
		for _, kv := range r.Kvs {
			if n, err := keys.NameOf(p, string(kv.Key)); err == nil && keys.ValidName(n) == nil {
				names[n] = true
			}
		}
	}
	return slices.Sorted(maps.Keys(names)), nil
}

func etcdconnDenied(err error) bool {
	return strings.Contains(err.Error(), "permission denied") || strings.Contains(err.Error(), "user name is empty")
}
