package etcdconn

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"github.com/weftnet/weft/internal/pki"
)

// ProbeTimeout bounds Diagnose's try of one endpoint.
const ProbeTimeout = 3 * time.Second

// Diagnose tries every endpoint the way the etcd client reaches it (the
// same scheme, TLS settings and server name) with an HTTPS or HTTP
// request for etcd's /version, and returns why the ones that fail do, one
// line per endpoint, naming it: nothing listening, no answer, or the TLS
// failure in words (unknown authority, wrong name, a client certificate
// etcd refuses or requires, TLS against plain HTTP). nil when every
// endpoint answers. gRPC hides all of these behind "context deadline
// exceeded"; this is how an operator learns which.
func (c Config) Diagnose(ctx context.Context) error {
	base, err := c.TLS()
	if err != nil {
		return err
	}
	var errs []error
	for _, ep := range c.Endpoints {
		if err := c.probe(ctx, ep, base); err != nil {
			errs = append(errs, fmt.Errorf("etcd %s: %w", ep, err))
		}
	}
	return errors.Join(errs...)
}

// Unreachable is Diagnose for a client that is already connecting: it
// waits up to ProbeTimeout for cc, the client's connection
// (clientv3.Client.ActiveConnection), to come up, and only when it does
// not (it failed, or nothing answered in time) asks every endpoint with
// Diagnose why. With one endpoint a connection that comes up is the
// answer and etcd is asked nothing more, so a process that starts does
// not pay a second connection and request for it; with several, the
// client needs only one of them, so the others are still asked. nil when
// every endpoint answers, or ctx ended.
func (c Config) Unreachable(ctx context.Context, cc *grpc.ClientConn) error {
	if len(c.Endpoints) == 1 && connected(ctx, cc) {
		return nil
	}
	if ctx.Err() != nil {
		return nil
	}
	return c.Diagnose(ctx)
}

// connected reports whether cc is up within ProbeTimeout, and false as
// soon as it fails instead.
func connected(ctx context.Context, cc *grpc.ClientConn) bool {
	ctx, cancel := context.WithTimeout(ctx, ProbeTimeout)
	defer cancel()
	for {
		s := cc.GetState()
		switch s {
		case connectivity.Ready:
			return true
		case connectivity.TransientFailure, connectivity.Shutdown:
			return false
		case connectivity.Idle:
			cc.Connect()
		}
		if !cc.WaitForStateChange(ctx, s) {
			return false
		}
	}
}

// probe asks ep for /version. Schemes follow the etcd client: https and
// unixs always speak TLS, http never (TLS files are ignored there), unix
// and bare host:port when TLS files are given.
func (c Config) probe(ctx context.Context, ep string, base *tls.Config) error {
	network, addr, serverName, secure, err := interpret(ep, base != nil)
	if err != nil {
		return err
	}
	var tc *tls.Config
	if secure {
		if base == nil {
			base = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		tc = base.Clone()
		tc.ServerName = serverName
	}
	pctx, cancel := context.WithTimeout(ctx, ProbeTimeout)
	defer cancel()
	// One connection, driven in order by this goroutine: dial, handshake,
	// request, answer. (http.Transport reads and writes on goroutines of
	// its own: when etcd refuses the client's certificate, the refusal
	// arrives on the read side, and a write that lost the race to it
	// reported only that the connection was closed.)
	var d net.Dialer
	conn, err := d.DialContext(pctx, network, addr)
	if err != nil {
		return c.explainDial(err, secure, serverName)
	}
	defer conn.Close()
	if dl, ok := pctx.Deadline(); ok {
		if err := conn.SetDeadline(dl); err != nil {
			return fmt.Errorf("probe: %w", err)
		}
	}
	rw := conn
	if secure {
		tconn := tls.Client(conn, tc)
		if err := tconn.HandshakeContext(pctx); err != nil {
			return c.explainDial(err, secure, serverName)
		}
		rw = tconn
	}
	scheme := "http"
	if secure {
		scheme = "https"
	}
	req, err := http.NewRequestWithContext(pctx, http.MethodGet, scheme+"://"+serverNameHost(serverName)+"/version", nil)
	if err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	req.Close = true
	// A TLS 1.3 server judges the client's certificate after the
	// handshake; its refusal is the first thing read, so the answer is
	// read even when the write failed, and its error says more.
	werr := req.Write(rw)
	resp, err := http.ReadResponse(bufio.NewReader(rw), req)
	if err != nil {
		return c.explainDial(err, secure, serverName)
	}
	if werr != nil {
		resp.Body.Close()
		return c.explainDial(werr, secure, serverName)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode == http.StatusBadRequest && strings.Contains(string(body), "HTTPS") {
		return errors.New("etcd serves TLS here and this client spoke plain HTTP: use https:// (or unixs://) with --etcd-cafile")
	}
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "etcdserver") {
		return fmt.Errorf("answered /version with %s, not as etcd does: is this etcd's client URL?", resp.Status)
	}
	return nil
}

func serverNameHost(s string) string {
	if strings.Contains(s, ":") && !strings.HasPrefix(s, "[") && net.ParseIP(s) != nil {
		return "[" + s + "]"
	}
	if s == "" {
		return "etcd"
	}
	return s
}

// interpret splits an endpoint as go.etcd.io/etcd/client/v3 does.
func interpret(ep string, haveTLS bool) (network, addr, serverName string, secure bool, err error) {
	for _, s := range []string{"unixs://", "unix://", "unixs:", "unix:"} {
		if p, ok := strings.CutPrefix(ep, s); ok {
			return "unix", p, path.Base(p), strings.HasPrefix(s, "unixs") || haveTLS, nil
		}
	}
	if !strings.Contains(ep, "://") {
		host, _, herr := net.SplitHostPort(ep)
		if herr != nil {
			return "", "", "", false, fmt.Errorf("endpoint %q: %w", ep, herr)
		}
		return "tcp", ep, host, haveTLS, nil
	}
	u, err := url.Parse(ep)
	if err != nil {
		return "", "", "", false, fmt.Errorf("endpoint %q: %w", ep, err)
	}
	switch u.Scheme {
	case "https":
		return "tcp", u.Host, u.Hostname(), true, nil
	case "http":
		return "tcp", u.Host, u.Hostname(), false, nil
	}
	return "", "", "", false, fmt.Errorf("endpoint %q: scheme %q is none of http, https, unix, unixs", ep, u.Scheme)
}

// explainDial turns a failed /version request into words.
func (c Config) explainDial(err error, secure bool, serverName string) error {
	var (
		ua   x509.UnknownAuthorityError
		host x509.HostnameError
		inv  x509.CertificateInvalidError
		rec  tls.RecordHeaderError
		op   *net.OpError
	)
	ca := c.CA
	if ca == "" {
		ca = "the system's roots (no --etcd-cafile)"
	}
	msg := err.Error()
	switch {
	case errors.As(err, &ua):
		return fmt.Errorf("TLS: etcd's certificate (%q, issued by %q) is signed by an unknown authority, not by %s", ua.Cert.Subject.CommonName, ua.Cert.Issuer.CommonName, ca)
	case errors.As(err, &host):
		return fmt.Errorf("TLS: etcd's certificate is for %s, not %q (wrong name): reissue it with that name or use a name it has", certNames(host.Certificate), serverName)
	case errors.As(err, &inv):
		return fmt.Errorf("TLS: etcd's certificate is not valid: %v", inv)
	case strings.Contains(msg, "remote error: tls: "):
		// The peer's alert; crypto/tls exports no type for it.
		return c.explainAlert(msg[strings.Index(msg, "remote error: tls: ")+len("remote error: tls: "):])
	case secure && (errors.As(err, &rec) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || strings.Contains(msg, "connection reset")):
		return errors.New("TLS: the endpoint does not speak TLS (it closed the handshake; plain HTTP?): use http://, or turn TLS on in etcd")
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &op) && op.Timeout():
		return fmt.Errorf("no answer within %s", ProbeTimeout)
	case errors.As(err, &op) && op.Op == "dial":
		return fmt.Errorf("cannot connect: %v", op.Err)
	case !secure && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || strings.Contains(msg, "malformed HTTP response") || strings.Contains(msg, "connection reset")):
		return errors.New("no HTTP answer to plain HTTP: etcd probably serves TLS here: use https:// (or unixs://) with --etcd-cafile")
	}
	return err
}

// explainAlert words a TLS alert from etcd (RFC 8446 section 6, as
// crypto/tls spells them).
func (c Config) explainAlert(alert string) error {
	switch alert {
	case "certificate required":
		if c.Cert == "" {
			return errors.New("TLS: etcd requires a client certificate and this client gave none: set --etcd-certfile and --etcd-keyfile")
		}
		// Go sends no certificate that the server's list of CAs does not
		// cover, so etcd saw none.
		return fmt.Errorf("TLS: etcd refused the client certificate %s: it is not signed by a CA etcd trusts (etcd's --trusted-ca-file), so none was sent", c.certDesc())
	case "bad certificate", "unknown certificate authority":
		return fmt.Errorf("TLS: etcd refused the client certificate %s (bad certificate: %s): it is not signed by a CA etcd trusts (etcd's --trusted-ca-file)", c.certDesc(), alert)
	case "expired certificate":
		return fmt.Errorf("TLS: etcd refused the client certificate %s: expired", c.certDesc())
	case "unsupported certificate", "certificate unknown":
		return fmt.Errorf("TLS: etcd refused the client certificate %s (%s): is it a client certificate (extended key usage clientAuth)?", c.certDesc(), alert)
	}
	return fmt.Errorf("TLS: etcd ended the handshake: %s", alert)
}

func (c Config) certDesc() string {
	if c.Cert == "" {
		return "(none)"
	}
	b, err := os.ReadFile(c.Cert)
	if err != nil {
		return c.Cert
	}
	cert, err := pki.ParseCertificate(b)
	if err != nil {
		return c.Cert
	}
	return fmt.Sprintf("%s (CN %s, issued by %q)", c.Cert, cert.Subject.CommonName, cert.Issuer.CommonName)
}

func certNames(c *x509.Certificate) string {
	var names []string
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	names = append(names, c.DNSNames...)
	if len(names) == 0 {
		return "no name"
	}
	return strings.Join(names, ", ")
}

// Explain adds to err what a caller of etcd needs to act on it. A request
// that got no answer (deadline exceeded, unavailable) gets Diagnose's
// finding per endpoint; a refusal for want of permission names the etcd
// user this client is (its certificate's CN). Other errors come back as
// they are.
func (c Config) Explain(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if denied(err) {
		who := "an unauthenticated client (no --etcd-certfile)"
		if c.Cert != "" {
			if cn, cerr := pki.ReadCommonName(c.Cert); cerr == nil {
				who = fmt.Sprintf("etcd user %q (CN of %s)", cn, c.Cert)
			}
		}
		return fmt.Errorf("%w: etcd refused it to %s", err, who)
	}
	if !unanswered(err) {
		return err
	}
	// The caller's context may be what ran out; the probe gets its own.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ProbeTimeout+time.Second)
	defer cancel()
	if d := c.Diagnose(dctx); d != nil {
		return fmt.Errorf("%w\n%v", err, d)
	}
	return err
}

func denied(err error) bool {
	for _, e := range []error{rpctypes.ErrPermissionDenied, rpctypes.ErrUserEmpty, rpctypes.ErrAuthFailed, rpctypes.ErrInvalidAuthToken} {
		if errors.Is(err, e) {
			return true
		}
	}
	return strings.Contains(err.Error(), "etcdserver: permission denied") || strings.Contains(err.Error(), "etcdserver: user name is empty")
}

func unanswered(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	if s, ok := status.FromError(err); ok {
		return s.Code() == codes.Unavailable || s.Code() == codes.DeadlineExceeded
	}
	return false
}
