package controller

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the controller's Prometheus metrics.
type Metrics struct {
	EventsAppended prometheus.Counter
	Head           prometheus.Gauge
	Leader         prometheus.Gauge
	AppendSeconds  prometheus.Histogram
	Nodes          prometheus.Gauge
	Problems       prometheus.Gauge
	ConfigRefusals prometheus.Counter
	// Trust: what the controller found wrong in the store and did.
	Repairs         *prometheus.CounterVec
	Quarantined     prometheus.Gauge
	Refused         prometheus.Counter
	StepDowns       prometheus.Counter
	ElectionGarbage prometheus.Counter
	// The per-node update hold-off (holdoff.go).
	UpdatesHeld prometheus.Counter
	NodesHeld   prometheus.Gauge
}

// NewMetrics creates the metrics and registers them with reg (when not nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		EventsAppended: prometheus.NewCounter(prometheus.CounterOpts{Name: "weft_controller_events_appended_total", Help: "Events this controller appended to the log."}),
		Head:           prometheus.NewGauge(prometheus.GaugeOpts{Name: "weft_controller_head_seq", Help: "Seq of the last event in the log, as this controller knows it."}),
		Leader:         prometheus.NewGauge(prometheus.GaugeOpts{Name: "weft_controller_leader", Help: "1 while this controller is the leader."}),
		AppendSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "weft_controller_append_seconds", Help: "Latency of one append transaction.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		Nodes:          prometheus.NewGauge(prometheus.GaugeOpts{Name: "weft_controller_nodes", Help: "Nodes in the projection."}),
		Problems:       prometheus.NewGauge(prometheus.GaugeOpts{Name: "weft_controller_problems", Help: "Nodes with a recorded problem (skipped registration, no CIDR)."}),
		ConfigRefusals: prometheus.NewCounter(prometheus.CounterOpts{Name: "weft_controller_config_refusals_total", Help: "Desired configs refused."}),
		Repairs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "weft_controller_projection_repairs_total",
			Help: "Stored keys rewritten or deleted because they disagreed with the log's fold, by kind (config, head, node, event, subnet)."}, []string{"kind"}),
		Quarantined: prometheus.NewGauge(prometheus.GaugeOpts{Name: "weft_controller_quarantined_keys",
			Help: "Stored keys with a bad value the controller cannot repair from the log; each has a /weft/problems/key:... entry."}),
		Refused: prometheus.NewCounter(prometheus.CounterOpts{Name: "weft_controller_events_refused_total",
			Help: "Events etcd refused (too large, too many operations); their nodes were skipped."}),
		StepDowns: prometheus.NewCounter(prometheus.CounterOpts{Name: "weft_controller_terms_ended_total",
			Help: "Leadership terms that ended (each is followed by a backoff before campaigning again)."}),
		ElectionGarbage: prometheus.NewCounter(prometheus.CounterOpts{Name: "weft_controller_election_garbage_removed_total",
			Help: "Keys under the election prefix that were no controller's candidacy, deleted."}),
		UpdatesHeld: prometheus.NewCounter(prometheus.CounterOpts{Name: "weft_controller_node_updates_held_total",
			Help: "Times a node's changed registration was not appended because the node's registration changes too often; its last value is appended when the hold ends."}),
		NodesHeld: prometheus.NewGauge(prometheus.GaugeOpts{Name: "weft_controller_nodes_held",
			Help: "Nodes whose NodeUpdated is held now because their registration changes too often; each has a /weft/problems/<node> entry."}),
	}
	if reg != nil {
		reg.MustRegister(m.EventsAppended, m.Head, m.Leader, m.AppendSeconds, m.Nodes, m.Problems, m.ConfigRefusals,
			m.Repairs, m.Quarantined, m.Refused, m.StepDowns, m.ElectionGarbage, m.UpdatesHeld, m.NodesHeld)
	}
	return m
}

func (m *Metrics) observe(events int, took time.Duration) {
	m.EventsAppended.Add(float64(events))
	m.AppendSeconds.Observe(took.Seconds())
}
