package nodeagent

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/weftnet/weft/bpf/spec"
	"github.com/weftnet/weft/nodeagent/model"
)

// metrics are the agent's Prometheus metrics, in a registry of its own so
// that many agents can live in one process (tests, benchmarks).
type metrics struct {
	reg           *prometheus.Registry
	applied       prometheus.Gauge
	head          prometheus.Gauge
	eventsApplied prometheus.Counter
	refused       prometheus.Counter
	relists       *prometheus.CounterVec
	syncDuration  *prometheus.HistogramVec
	repairs       prometheus.Counter
	degraded      prometheus.Gauge
	peerProblems  prometheus.Gauge
	tunnels       prometheus.Gauge
	routes        prometheus.Gauge
	// peersUnreachable is set by the prober's OnChange (0 without one).
	peersUnreachable prometheus.Gauge
	// quarantined counts the projection values the agent cannot use.
	quarantined prometheus.Gauge
	// bgpRefused counts learned BGP routes refused, once per route while
	// it is announced; bgpRefusedNow is how many are refused now.
	bgpRefused    *prometheus.CounterVec
	bgpRefusedNow prometheus.Gauge
}

func newMetrics(a *Agent) *metrics {
	m := &metrics{
		reg:           prometheus.NewRegistry(),
		applied:       prometheus.NewGauge(prometheus.GaugeOpts{Name: "weft_agent_applied_seq", Help: "Seq of the last event folded into the model."}),
		head:          prometheus.NewGauge(prometheus.GaugeOpts{Name: "weft_agent_head_seq", Help: "Highest head seq the agent has seen."}),
		eventsApplied: prometheus.NewCounter(prometheus.CounterOpts{Name: "weft_agent_events_applied_total", Help: "Events applied from the watch."}),
		refused:       prometheus.NewCounter(prometheus.CounterOpts{Name: "weft_agent_refused_total", Help: "Events and projection values refused (undecodable or invalid)."}),
		relists:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "weft_agent_relists_total", Help: "Lists of the projection, by reason (start, gap, trimmed, compacted, watch_ended, rewritten, changed)."}, []string{"reason"}),
		syncDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "weft_agent_sync_duration_seconds",
			Help:    "Duration of datapath Sync and Reconcile calls.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 12),
		}, []string{"op"}),
		repairs:      prometheus.NewCounter(prometheus.CounterOpts{Name: "weft_agent_repairs_total", Help: "Pieces of datapath drift repaired by Reconcile."}),
		degraded:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "weft_agent_degraded", Help: "1 while etcd is unreachable, the datapath does not converge, a peer is unreachable or a projection value is unusable."}),
		peerProblems: prometheus.NewGauge(prometheus.GaugeOpts{Name: "weft_agent_peer_problems", Help: "Remote nodes the datapath does not serve in the current mode."}),
		tunnels:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "weft_agent_tunnel_entries", Help: "Tunnel map entries synced."}),
		routes:       prometheus.NewGauge(prometheus.GaugeOpts{Name: "weft_agent_route_entries", Help: "Routes synced (cluster routes and direct routes)."}),
		peersUnreachable: prometheus.NewGauge(prometheus.GaugeOpts{Name: "weft_agent_peers_unreachable",
			Help: "Peers whose pod gateway does not answer probes through the datapath (past their grace)."}),
		quarantined: prometheus.NewGauge(prometheus.GaugeOpts{Name: "weft_agent_quarantined_keys",
			Help: "Projection values (/weft/config, /weft/nodes/<name>) the agent cannot use; it holds their last good value and is degraded."}),
		bgpRefused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "weft_agent_bgp_routes_refused_total",
			Help: "Learned BGP routes the agent refused to install, by reason, each counted (and logged) once while it is announced."}, []string{"reason"}),
		bgpRefusedNow: prometheus.NewGauge(prometheus.GaugeOpts{Name: "weft_agent_bgp_routes_refused",
			Help: "Learned BGP routes refused now (not installed)."}),
	}
	for _, r := range model.RefuseReasons {
		m.bgpRefused.WithLabelValues(r)
	}
	lag := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "weft_agent_lag_events", Help: "Events between the head seen and the applied seq."}, func() float64 {
		st := a.Status()
		return float64(st.HeadSeq - st.AppliedSeq)
	})
	// The standard Go runtime and process collectors: RSS, open fds, GC
	// and goroutines of the agent must be watchable like any daemon's.
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.reg.MustRegister(m.applied, m.head, m.eventsApplied, m.refused, m.relists, m.syncDuration, m.repairs,
		m.degraded, m.peerProblems, m.tunnels, m.routes, lag, counterCollector{a.dp}, bgpCollector{a},
		m.peersUnreachable, reachCollector{a}, m.quarantined, m.bgpRefused, m.bgpRefusedNow)
	return m
}

// reachCollector exports the prober's counts at scrape time (nothing
// without a prober).
type reachCollector struct{ a *Agent }

var reachDescs = struct{ reachable, probes *prometheus.Desc }{
	prometheus.NewDesc("weft_agent_peers_reachable", "Peers whose pod gateway answered the last probe.", nil, nil),
	prometheus.NewDesc("weft_agent_probes_total", "Reachability probes sent, by result (answered, failed).", []string{"result"}, nil),
}

func (c reachCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- reachDescs.reachable
	ch <- reachDescs.probes
}

func (c reachCollector) Collect(ch chan<- prometheus.Metric) {
	if c.a.prober == nil {
		return
	}
	r := c.a.prober.Report()
	ch <- prometheus.MustNewConstMetric(reachDescs.reachable, prometheus.GaugeValue, float64(r.Reachable))
	ch <- prometheus.MustNewConstMetric(reachDescs.probes, prometheus.CounterValue, float64(r.Answered), "answered")
	ch <- prometheus.MustNewConstMetric(reachDescs.probes, prometheus.CounterValue, float64(r.Failed), "failed")
}

func (m *metrics) entries(d *spec.Desired) {
	m.tunnels.Set(float64(len(d.Tunnels)))
	m.routes.Set(float64(len(d.Routes) + len(d.ClusterCIDRs)))
}

// counterCollector exports the datapath's BPF counters at scrape time.
type counterCollector struct{ dp Datapath }

var counterDescs = map[string]*prometheus.Desc{
	"tx_packets": prometheus.NewDesc("weft_datapath_tx_packets_total", "Packets sent into the tunnel (by the egress program, or encapsulated in the programs).", nil, nil),
	"tx_bytes":   prometheus.NewDesc("weft_datapath_tx_bytes_total", "Bytes sent into the tunnel (inner frames).", nil, nil),
	"rx_packets": prometheus.NewDesc("weft_datapath_rx_packets_total", "Packets accepted by the ingress program.", nil, nil),
	"rx_bytes":   prometheus.NewDesc("weft_datapath_rx_bytes_total", "Bytes accepted by the ingress program.", nil, nil),
	"drops":      prometheus.NewDesc("weft_datapath_drops_total", "Packets dropped by the programs, by class (no_tunnel, spoofed, other).", []string{"reason"}, nil),
	"drop_reasons": prometheus.NewDesc("weft_datapath_drop_reasons_total",
		"Packets dropped by the programs, by reason (docs/datapath.md lists them).", []string{"reason"}, nil),
	"direct": prometheus.NewDesc("weft_datapath_direct_packets_total",
		"Overlay packets that skipped the pod bridge: rx entered a local pod straight from the tunnel, tx went from a pod's veth straight into it (counted in rx/tx_packets too).",
		[]string{"direction"}, nil),
	"encap": prometheus.NewDesc("weft_datapath_encap_packets_total",
		"Packets the programs encapsulated in VXLAN themselves and sent out of the underlay, skipping the overlay device (tunnel_datapath bpf; counted in tx_packets too).",
		nil, nil),
	"big": prometheus.NewDesc("weft_datapath_big_packets_total",
		"BIG packets (BIG TCP: outer IPv4 longer than 65,535) the programs sent and took out of the VXLAN tunnel themselves, by direction (tx: encapsulated, counted in encap too; rx: decapsulated; rx_stack: of rx, handed to the overlay device's receive because no local pod could take them).",
		[]string{"direction"}, nil),
	"routed": prometheus.NewDesc("weft_datapath_routed_packets_total",
		"Packets host routing forwarded in eBPF past the node's stack between a local pod and a natively routed remote pod, by direction (tx: out to the underlay, rx: into the pod).",
		[]string{"direction"}, nil),
}

func (c counterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range counterDescs {
		ch <- d
	}
}

func (c counterCollector) Collect(ch chan<- prometheus.Metric) {
	s, err := c.dp.Counters()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(counterDescs["tx_packets"], fmt.Errorf("read datapath counters: %w", err))
		return
	}
	cm := func(name string, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(counterDescs[name], prometheus.CounterValue, float64(v), labels...)
	}
	cm("tx_packets", s.TxPackets)
	cm("tx_bytes", s.TxBytes)
	cm("rx_packets", s.RxPackets)
	cm("rx_bytes", s.RxBytes)
	cm("drops", s.DropNoTunnel, "no_tunnel")
	cm("drops", s.DropSpoofed, "spoofed")
	cm("drops", s.DropOther, "other")
	cm("direct", s.RxDirect, "rx")
	cm("direct", s.TxDirect, "tx")
	cm("encap", s.TxEncap)
	cm("big", s.TxEncapBig, "tx")
	cm("big", s.RxDecapBig, "rx")
	cm("big", s.RxDecapStack, "rx_stack")
	cm("routed", s.RoutedRx, "rx")
	cm("routed", s.RoutedTx, "tx")
	for reason, n := range s.Drops {
		cm("drop_reasons", n, reason)
	}
}

// Handler serves /metrics (Prometheus); /healthz (readiness): 200
// "ok", 503 "not ready: not converged yet: <what>" before the node's
// first convergence, 503 "degraded: <reasons>" while etcd is unreachable,
// the datapath does not converge, peers are unreachable or the converge
// loop is stuck; and /livez (liveness): 200 "ok" unless the converge loop
// is stuck (see Liveness).
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/livez", a.serveLivez)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		unconverged, degraded := a.readiness()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		switch {
		case len(degraded) > 0:
			if unconverged != "" {
				degraded = append(degraded, unconverged)
			}
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "degraded: "+strings.Join(degraded, "; "))
		case unconverged != "":
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not ready: "+unconverged)
		default:
			fmt.Fprintln(w, "ok")
		}
	})
	// Every unreachable peer, one line each: the status in etcd lists only
	// the first (statusUnreachable) so its value stays small.
	mux.HandleFunc("/unreachable", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if a.prober == nil {
			return
		}
		for _, u := range a.prober.Report().Unreachable {
			fmt.Fprintf(w, "%s %s since %s: %s\n", u.Node, u.Addr, u.Since.UTC().Format(time.RFC3339), u.Reason)
		}
	})
	return mux
}
