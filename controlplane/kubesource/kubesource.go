// Package kubesource is the controller's node source for Kubernetes: it
// watches Node objects with a client-go informer and reports them as
// source.Changes. A Node's InternalIP is its underlay address and its
// spec.podCIDRs (when the cluster allocates pod CIDRs) are pinned, so weft
// uses the cluster's allocation; a Node without them gets a CIDR from
// weft's allocator. A deleted Node is Gone with Immediate set.
package kubesource

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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

// Source reports Kubernetes Nodes. Create it with New.
type Source struct {
	client   kubernetes.Interface
	selector labels.Selector
	rawSel   string
	resync   time.Duration
	log      hclog.Logger
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

// WithLogger sets the logger (default: none).
func WithLogger(l hclog.Logger) Option {
	return func(s *Source) error { s.log = l.Named("kubesource"); return nil }
}

// New returns a Node source reading through client. It fails only on a bad
// option (an unparsable label selector).
func New(client kubernetes.Interface, opts ...Option) (*Source, error) {
	s := &Source{client: client, selector: labels.Everything(), resync: 10 * time.Minute, log: hclog.NewNullLogger()}
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
	var ip string
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			ip = a.Address
			break
		}
	}
	if ip == "" {
		return source.Change{Kind: source.Invalid, Name: n.Name, Err: fmt.Errorf("node %s: %w", n.Name, ErrNoInternalIP)}
	}
	reg.UnderlayIp = ip
	if a, err := netip.ParseAddr(ip); err == nil {
		reg.UnderlayIp = a.Unmap().String()
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
	factory := informers.NewSharedInformerFactoryWithOptions(s.client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = s.rawSel }))
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
	if !cache.WaitForCacheSync(ctx.Done(), reg.HasSynced) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return errors.New("kubesource: node cache did not sync")
	}
	lister := inf.Lister()
	known := map[string]source.Change{}
	fullSync := func() error {
		nodes, err := lister.List(s.selector)
		if err != nil {
			return fmt.Errorf("list nodes: %w", err)
		}
		sort.Slice(nodes, func(i, j int) bool { return nodes[i].Name < nodes[j].Name })
		set := make([]source.Change, 0, len(nodes))
		clear(known)
		for _, n := range nodes {
			c := Change(n)
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
	if ev.deleted || !s.selector.Matches(labels.Set(n.Labels)) {
		// A Node whose labels stop matching leaves the source like a
		// deleted one.
		if _, ok := known[n.Name]; !ok {
			return source.Change{}, false
		}
		delete(known, n.Name)
		s.log.Info("node gone", "node", n.Name)
		return source.Change{Kind: source.Gone, Name: n.Name, Immediate: true}, true
	}
	c := Change(n)
	if old, ok := known[n.Name]; ok && same(old, c) {
		return source.Change{}, false
	}
	known[n.Name] = c
	if c.Kind == source.Invalid {
		s.log.Warn("node unusable", "node", n.Name, "error", c.Err)
	} else {
		s.log.Info("node", "node", n.Name, "underlay_ip", c.Registration.UnderlayIp, "pod_cidrs", c.Registration.PinnedPodCidrs)
	}
	return c, true
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
