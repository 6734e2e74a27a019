// Package kubesource is the controller's node source for Kubernetes: it
// watches Node objects with a client-go informer and reports them as
// source.Changes. A Node's InternalIP is its underlay address (on a
// dual-stack Node the IPv6 one is also kept, as underlay_ip_v6) and its
// spec.podCIDRs (when the cluster allocates pod CIDRs) are pinned, so weft
// uses the cluster's allocation; a Node without them gets a CIDR from
// weft's allocator. A deleted Node is Gone with Immediate set.
package kubesource

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/weftnet/weft/controlplane/source"
	"github.com/weftnet/weft/proto/validate"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// ErrNoInternalIP is wrapped by the Invalid change of a Node that has no
// InternalIP address.
var ErrNoInternalIP = errors.New("kubesource: node has no InternalIP address")

// ErrOutsideSelector is wrapped by the Gone change of a Node whose labels
// do not match the source's label selector: it is not part of the weft
// network, and the controller records why.
var ErrOutsideSelector = errors.New("kubesource: node is outside the node selector")

// UnderlayAnnotation on a Node overrides its InternalIP as weft's underlay
// address (like flannel's public-ip-overwrite): for nodes whose tunnel
// endpoint is not the address Kubernetes reports. A value that is not an
// IP address makes the Node Invalid, naming the annotation.
const UnderlayAnnotation = "weft.io/underlay-ip"

// Source reports Kubernetes Nodes. Create it with New.
type Source struct {
	client   kubernetes.Interface
	selector labels.Selector
	rawSel   string
	resync   time.Duration
	log      hclog.Logger

	healthEvery time.Duration

	mu     sync.Mutex
	synced bool
	apiErr error // the last API probe's failure
}

var _ source.Source = (*Source)(nil)

// Option configures a Source.
type Option func(*Source) error

// WithLabelSelector restricts the source to Nodes matching sel (Kubernetes
// label selector syntax, e.g. "weft.io/enabled=true").
func WithLabelSelector(sel string) Option {
	return func(s *Source) error {
		parsed, err := labels.Parse(sel)
		if err != nil {
			return fmt.Errorf("parse label selector %q: %w", sel, err)
		}
		s.selector, s.rawSel = parsed, sel
		return nil
	}
}

// WithResync sets how often the source reports the complete set again
// through sync (default 10 minutes; 0 disables).
func WithResync(d time.Duration) Option {
	return func(s *Source) error { s.resync = d; return nil }
}

// WithHealthInterval sets how often Run asks the API server whether it
// answers (default 5 seconds), for Health and the logs.
func WithHealthInterval(d time.Duration) Option {
	return func(s *Source) error {
		if d <= 0 {
			return fmt.Errorf("health interval %v: must be positive", d)
		}
		s.healthEvery = d
		return nil
	}
}

// WithLogger sets the logger (default: none).
func WithLogger(l hclog.Logger) Option {
	return func(s *Source) error { s.log = l.Named("kubesource"); return nil }
}

// New returns a Node source reading through client. It fails only on a bad
// option (an unparsable label selector).
func New(client kubernetes.Interface, opts ...Option) (*Source, error) {
	s := &Source{client: client, selector: labels.Everything(), resync: 10 * time.Minute, healthEvery: 5 * time.Second, log: hclog.NewNullLogger()}
	for _, o := range opts {
		if err := o(s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Change turns a Node into the Change the source reports for it: an
// Upsert, or Invalid when it has no usable InternalIP, name or pod CIDR.
func Change(n *corev1.Node) source.Change {
	reg := &weftv1.Registration{Name: n.Name}
	// The first InternalIP is the underlay address (Kubernetes lists the
	// primary family first); on a dual-stack node the first IPv6 one
	// beside an IPv4 underlay address is its underlay_ip_v6.
	var ip, ip6 string
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		if ip == "" {
			ip = a.Address
		} else if x, err := netip.ParseAddr(a.Address); err == nil && x.Is6() && !x.Is4In6() && ip6 == "" {
			ip6 = x.String()
		}
	}
	if v, ok := n.Annotations[UnderlayAnnotation]; ok {
		a, err := netip.ParseAddr(v)
		if err != nil {
			return source.Change{Kind: source.Invalid, Name: n.Name,
				Err: fmt.Errorf("node %s: annotation %s: %q is not an IP address", n.Name, UnderlayAnnotation, v)}
		}
		ip = a.String()
	}
	if ip == "" {
		return source.Change{Kind: source.Invalid, Name: n.Name, Err: fmt.Errorf("node %s: %w", n.Name, ErrNoInternalIP)}
	}
	reg.UnderlayIp = ip
	if a, err := netip.ParseAddr(ip); err == nil {
		reg.UnderlayIp = a.Unmap().String()
		if a.Unmap().Is4() {
			reg.UnderlayIpV6 = ip6
		}
	}
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	reg.PinnedPodCidrs = slices.Clone(cidrs)
	if err := validate.Registration(reg); err != nil {
		return source.Change{Kind: source.Invalid, Name: n.Name, Err: fmt.Errorf("node %s: %w", n.Name, err)}
	}
	return source.Change{Kind: source.Upsert, Name: n.Name, Registration: reg}
}

func same(a, b source.Change) bool {
	if a.Kind != b.Kind || a.Name != b.Name {
		return false
	}
	switch a.Kind {
	case source.Invalid:
		return a.Err.Error() == b.Err.Error()
	case source.Upsert:
		return a.Registration.UnderlayIp == b.Registration.UnderlayIp &&
			a.Registration.UnderlayIpV6 == b.Registration.UnderlayIpV6 &&
			slices.Equal(a.Registration.PinnedPodCidrs, b.Registration.PinnedPodCidrs)
	}
	return true
}

// Run watches Nodes until ctx ends: it calls sync with the complete set
// once the informer's cache has synced and again every resync period, and
// changes for each add, relevant update (InternalIP, pod CIDRs) and
// delete in between. Callbacks run on Run's goroutine, never concurrently.
// It returns ctx's error, or an error when the cache never syncs.
func (s *Source) Run(ctx context.Context, sync func([]source.Change), changes func(source.Change)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Every Node is watched, not only the selected ones: a Node outside
	// the selector is reported Gone with the reason, so an operator sees
	// why it is not in the network.
	factory := informers.NewSharedInformerFactory(s.client, 0)
	defer factory.Shutdown()
	inf := factory.Core().V1().Nodes()
	q := newQueue()
	reg, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { q.push(event{obj: obj}) },
		UpdateFunc: func(_, obj any) { q.push(event{obj: obj}) },
		DeleteFunc: func(obj any) { q.push(event{obj: obj, deleted: true}) },
	})
	if err != nil {
		return fmt.Errorf("watch nodes: %w", err)
	}
	factory.Start(ctx.Done())
	// The informer retries a failing list or watch on its own, quietly
	// and with its cache kept; whether the API answers is asked here.
	probeDone := make(chan struct{})
	go func() {
		defer close(probeDone)
		s.probe(ctx)
	}()
	defer func() { cancel(); <-probeDone }()
	if !cache.WaitForCacheSync(ctx.Done(), reg.HasSynced) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return errors.New("kubesource: node cache did not sync")
	}
	s.mu.Lock()
	s.synced = true
	s.mu.Unlock()
	lister := inf.Lister()
	known := map[string]source.Change{}
	fullSync := func() error {
		nodes, err := lister.List(labels.Everything())
		if err != nil {
			return fmt.Errorf("list nodes: %w", err)
		}
		sort.Slice(nodes, func(i, j int) bool { return nodes[i].Name < nodes[j].Name })
		set := make([]source.Change, 0, len(nodes))
		clear(known)
		for _, n := range nodes {
			c := s.change(n)
			known[n.Name] = c
			set = append(set, c)
		}
		s.log.Debug("sync", "nodes", len(set))
		sync(set)
		return nil
	}
	if err := fullSync(); err != nil {
		return err
	}
	var tick <-chan time.Time
	if s.resync > 0 {
		t := time.NewTicker(s.resync)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick:
			if err := fullSync(); err != nil {
				return err
			}
		case <-q.ready:
			for _, ev := range q.drain() {
				if c, ok := s.handle(ev, known); ok {
					changes(c)
				}
			}
		}
	}
}

// handle turns an informer event into a Change, or reports false when
// nothing the controller cares about changed.
func (s *Source) handle(ev event, known map[string]source.Change) (source.Change, bool) {
	obj := ev.obj
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	n, ok := obj.(*corev1.Node)
	if !ok {
		return source.Change{}, false
	}
	if ev.deleted {
		if _, ok := known[n.Name]; !ok {
			return source.Change{}, false
		}
		delete(known, n.Name)
		s.log.Info("node gone", "node", n.Name)
		return source.Change{Kind: source.Gone, Name: n.Name, Immediate: true}, true
	}
	c := s.change(n)
	if old, ok := known[n.Name]; ok && same(old, c) {
		return source.Change{}, false
	}
	known[n.Name] = c
	switch c.Kind {
	case source.Invalid:
		s.log.Warn("node unusable", "node", n.Name, "error", c.Err)
	case source.Gone:
		s.log.Info("node outside the selector", "node", n.Name, "selector", s.rawSel)
	default:
		s.log.Info("node", "node", n.Name, "underlay_ip", c.Registration.UnderlayIp, "pod_cidrs", c.Registration.PinnedPodCidrs)
	}
	return c, true
}

// change is Change for a Node the source sees: a Node whose labels do
// not match the selector leaves the network like a deleted one (Gone,
// Immediate), with ErrOutsideSelector as the reason.
func (s *Source) change(n *corev1.Node) source.Change {
	if !s.selector.Matches(labels.Set(n.Labels)) {
		return source.Change{Kind: source.Gone, Name: n.Name, Immediate: true,
			Err: fmt.Errorf("node %s: %w %q", n.Name, ErrOutsideSelector, s.rawSel)}
	}
	return Change(n)
}

// probe asks the API server every health interval whether it answers,
// until ctx ends, and logs when that changes.
func (s *Source) probe(ctx context.Context) {
	t := time.NewTicker(s.healthEvery)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, s.healthEvery)
		err := s.ping(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		s.mu.Lock()
		was := s.apiErr
		s.apiErr = err
		s.mu.Unlock()
		switch {
		case err != nil && was == nil:
			s.log.Warn("kubernetes API unreachable; nodes are kept as they are until it answers", "error", err)
		case err == nil && was != nil:
			s.log.Info("kubernetes API reachable again")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Health reports why the source cannot be trusted to be current: the API
// server did not answer the last probe (nodes are then kept as they are:
// nothing is reported gone because the API is unreachable), or the Node
// cache has not synced yet. nil means the source follows the API. Safe
// for concurrent use with Run.
func (s *Source) Health() error {
	s.mu.Lock()
	synced, apiErr := s.synced, s.apiErr
	s.mu.Unlock()
	switch {
	case apiErr != nil:
		return fmt.Errorf("kubernetes API unreachable, nodes kept as they are: %w", apiErr)
	case !synced:
		return errors.New("kubernetes node cache not synced yet")
	}
	return nil
}

// ping asks the API server for its version (allowed to every
// authenticated identity by the default system:public-info-viewer role).
func (s *Source) ping(ctx context.Context) error {
	d := s.client.Discovery()
	if rc := d.RESTClient(); rc != nil && !reflect.ValueOf(rc).IsNil() {
		_, err := rc.Get().AbsPath("/version").Do(ctx).Raw()
		return err
	}
	_, err := d.ServerVersion()
	return err
}

type event struct {
	obj     any
	deleted bool
}

// queue is an unbounded FIFO between the informer's handler goroutine and
// Run, so a slow controller never blocks the informer.
type queue struct {
	mu    sync.Mutex
	items []event
	ready chan struct{}
}

func newQueue() *queue { return &queue{ready: make(chan struct{}, 1)} }

func (q *queue) push(e event) {
	q.mu.Lock()
	q.items = append(q.items, e)
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

func (q *queue) drain() []event {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := q.items
	q.items = nil
	return out
}
