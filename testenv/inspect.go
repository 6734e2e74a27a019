package testenv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
)

// httpIn returns an HTTP client whose connections are made inside the
// named namespace (agents serve metrics on the node's loopback).
func httpIn(ns string) *http.Client {
	return &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return dialIn(ctx, ns, network, addr)
			},
		},
	}
}

// AgentGet fetches path (e.g. "/metrics", "/healthz") from node i's agent
// and returns the status code and body.
func (c *Cluster) AgentGet(ctx context.Context, n *Node, path string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+MetricsAddr+path, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := httpIn(n.NS).Do(req)
	if err != nil {
		return 0, "", fmt.Errorf("get %s from agent of %s: %w", path, n.Name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// Metrics scrapes node's agent and returns every sample, keyed by the
// metric name with its labels as printed (e.g. `weft_x{dir="tx"}`).
func (c *Cluster) Metrics(ctx context.Context, n *Node) (map[string]float64, error) {
	code, body, err := c.AgentGet(ctx, n, "/metrics")
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("metrics of %s: HTTP %d", n.Name, code)
	}
	return ParseMetrics(body), nil
}

// ParseMetrics parses the Prometheus text format into name{labels} → value.
func ParseMetrics(body string) map[string]float64 {
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		end := strings.IndexByte(line, ' ')
		if b := strings.IndexByte(line, '{'); b >= 0 && (end < 0 || b < end) {
			end = strings.LastIndexByte(line, '}') + 1
		}
		if end <= 0 || end >= len(line) {
			continue
		}
		fields := strings.Fields(line[end:])
		if len(fields) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			continue
		}
		out[line[:end]] = v
	}
	return out
}

// SumMetric adds every sample of the named metric (all label sets).
func SumMetric(m map[string]float64, name string) float64 {
	var s float64
	for k, v := range m {
		if k == name || strings.HasPrefix(k, name+"{") {
			s += v
		}
	}
	return s
}

// LinkMTU returns the MTU of a link in namespace ns.
func LinkMTU(ns, link string) (int, error) {
	var mtu int
	err := withHandle(ns, func(h *netlink.Handle) error {
		l, err := h.LinkByName(link)
		if err != nil {
			return fmt.Errorf("find %s in %s: %w", link, ns, err)
		}
		mtu = l.Attrs().MTU
		return nil
	})
	return mtu, err
}

// Links lists the link names in namespace ns.
func Links(ns string) ([]string, error) {
	var out []string
	err := withHandle(ns, func(h *netlink.Handle) error {
		ls, err := h.LinkList()
		if err != nil {
			return fmt.Errorf("list links in %s: %w", ns, err)
		}
		for _, l := range ls {
			out = append(out, l.Attrs().Name)
		}
		return nil
	})
	return out, err
}

// Routes lists the routes (both families) of the main table in namespace ns, as
// "dst via gw dev" strings.
func Routes(ns string) ([]string, error) {
	var out []string
	err := withHandle(ns, func(h *netlink.Handle) error {
		rs, err := h.RouteList(nil, netlink.FAMILY_ALL)
		if err != nil {
			return fmt.Errorf("list routes in %s: %w", ns, err)
		}
		names := map[int]string{}
		ls, _ := h.LinkList()
		for _, l := range ls {
			names[l.Attrs().Index] = l.Attrs().Name
		}
		for _, r := range rs {
			dst := "default"
			if r.Dst != nil {
				dst = r.Dst.String()
			}
			s := dst
			if r.Gw != nil {
				s += " via " + r.Gw.String()
			}
			s += " dev " + names[r.LinkIndex]
			out = append(out, s)
		}
		return nil
	})
	return out, err
}

// LogTail returns the last n lines of a process log.
func LogTail(p *Proc, n int) string {
	b, err := readFileTail(p.Log, 64<<10)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(b, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ControllerMetrics scrapes controller k (its metrics address is on the
// control namespace's loopback).
func (c *Cluster) ControllerMetrics(ctx context.Context, k int) (map[string]float64, error) {
	body, err := c.ControllerMetricsText(ctx, k)
	if err != nil {
		return nil, err
	}
	return ParseMetrics(body), nil
}

// ControllerMetricsText is controller k's /metrics as served.
func (c *Cluster) ControllerMetricsText(ctx context.Context, k int) (string, error) {
	url := fmt.Sprintf("http://127.0.0.1:%d/metrics", 9470+2*k)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := httpIn(c.CtlNS).Do(req)
	if err != nil {
		return "", fmt.Errorf("metrics of controller %d: %w", k, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("metrics of controller %d: %w", k, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("metrics of controller %d: HTTP %d", k, resp.StatusCode)
	}
	return string(b), nil
}

// Leader returns the index of the controller that reports itself leader
// (metric weft_controller_leader = 1), or -1 with the reason.
func (c *Cluster) Leader(ctx context.Context) (int, string) {
	var why []string
	leader := -1
	for k, p := range c.Controllers {
		if !p.Running() {
			why = append(why, fmt.Sprintf("controller %d not running", k))
			continue
		}
		m, err := c.ControllerMetrics(ctx, k)
		if err != nil {
			why = append(why, err.Error())
			continue
		}
		if m["weft_controller_leader"] == 1 {
			if leader >= 0 {
				return -1, fmt.Sprintf("controllers %d and %d both report leading", leader, k)
			}
			leader = k
		}
	}
	if leader < 0 {
		return -1, "no controller leads: " + strings.Join(why, "; ")
	}
	return leader, ""
}

// HasGeneve reports whether the kernel can create a Geneve device, by
// trying in namespace ns (one of the run's own) and removing it again.
func HasGeneve(ns string) (bool, error) {
	var ok bool
	err := withHandle(ns, func(h *netlink.Handle) error {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = "wtgeneveprobe"
		err := h.LinkAdd(&netlink.Geneve{LinkAttrs: attrs, ID: 1, Remote: net.ParseIP("10.99.0.1")})
		if err != nil {
			if errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.ENOTSUP) {
				return nil
			}
			return fmt.Errorf("probe geneve: %w", err)
		}
		ok = true
		if l, err := h.LinkByName(attrs.Name); err == nil {
			h.LinkDel(l)
		}
		return nil
	})
	return ok, err
}
