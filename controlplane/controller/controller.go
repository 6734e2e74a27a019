// Package controller is weft's controller: it campaigns for leadership
// and, while leader, turns what the node source reports and what operators
// ask for at /weft/desired/config into events in the log.
//
// Reconciling is level-triggered: the controller keeps the registrations
// the source reports, compares them with the projection and appends
// NodeAdded, NodeUpdated and NodeRemoved; registrations that arrive
// together are appended together in few transactions. A node whose
// registration keeps changing has its NodeUpdated held and coalesced
// (holdoff.go), so no node decides how fast the log grows.
package controller

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/weftnet/weft/controlplane/regsource"
	"github.com/weftnet/weft/controlplane/source"
	"github.com/weftnet/weft/controlplane/store"
	"github.com/weftnet/weft/internal/backoff"
	"github.com/weftnet/weft/proto/keys"
	"github.com/weftnet/weft/proto/validate"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// Options configure a Controller. Client is required.
type Options struct {
	Client *clientv3.Client
	Layout keys.Layout
	// Source reports nodes; default the registration source.
	Source source.Source
	// Initial is the config written as the first event when the log is
	// empty. It must have passed validate.Config after WithDefaults.
	// When nil, the controller waits for a desired config.
	Initial *weftv1.ClusterConfig
	// ElectionTTL is the election session's TTL; default 10s.
	ElectionTTL time.Duration
	// ID is this candidate's value in the election; default hostname+pid.
	ID      string
	Logger  hclog.Logger
	Metrics *Metrics
	// GraceUnit is the length of one node_grace_seconds unit; default a
	// second. Tests shorten it.
	GraceUnit time.Duration
	// Batch is how long changes that arrive back to back gather before
	// the controller reconciles them, so a burst of joins shares
	// transactions; default 20ms. A change that finds the controller idle
	// (nothing reconciled for the last Batch) is reconciled at once.
	Batch time.Duration
	// TrimInterval is how often the log is trimmed to event_retention;
	// default 30s.
	TrimInterval time.Duration
	// MaxOps bounds an append transaction (see store.Options).
	MaxOps int
	// VerifyInterval is how often the leader compares the projection
	// keys with the log's fold and repairs them; default 10s.
	VerifyInterval time.Duration
	// ContactInterval is how often the leader checks that etcd answers
	// (the removal rule counts a node's grace from the last time contact
	// came back); each check times out after it. Default 1s.
	ContactInterval time.Duration
	// Clock is what the per-node update hold-off (holdoff.go) counts
	// in; default the wall clock.
	Clock Clock
}

// Controller is one candidate leader. Run it with Run.
type Controller struct {
	opt    Options
	log    hclog.Logger
	m      *Metrics
	leader atomic.Bool
}

// New returns a controller.
func New(opt Options) *Controller {
	if opt.Logger == nil {
		opt.Logger = hclog.NewNullLogger()
	}
	if opt.Layout.Prefix == "" {
		opt.Layout = keys.New("")
	}
	if opt.Source == nil {
		opt.Source = regsource.New(opt.Client, opt.Layout, opt.Logger)
	}
	if opt.ElectionTTL <= 0 {
		opt.ElectionTTL = 10 * time.Second
	}
	if opt.ID == "" {
		h, _ := os.Hostname()
		opt.ID = fmt.Sprintf("%s/%d", h, os.Getpid())
	}
	if opt.GraceUnit <= 0 {
		opt.GraceUnit = time.Second
	}
	if opt.Batch <= 0 {
		opt.Batch = 20 * time.Millisecond
	}
	if opt.TrimInterval <= 0 {
		opt.TrimInterval = 30 * time.Second
	}
	if opt.Metrics == nil {
		opt.Metrics = NewMetrics(nil)
	}
	if opt.VerifyInterval <= 0 {
		opt.VerifyInterval = 10 * time.Second
	}
	if opt.ContactInterval <= 0 {
		opt.ContactInterval = time.Second
	}
	if opt.Clock == nil {
		opt.Clock = wallClock{}
	}
	return &Controller{opt: opt, log: opt.Logger.Named("controller"), m: opt.Metrics}
}

// IsLeader reports whether the controller leads now.
func (c *Controller) IsLeader() bool { return c.leader.Load() }

// Backoff between leadership terms. A term that ends is never the data's
// fault (bad values are quarantined inside the term), but whatever ended
// it, the controller waits before campaigning again, longer each time,
// so nothing makes leadership flap.
const (
	termRetryMin, termRetryMax = 200 * time.Millisecond, 10 * time.Second
	// termSettled: a term that lasted this long resets the backoff.
	termSettled = 30 * time.Second
)

// Run campaigns and leads until ctx ends; losing leadership starts a new
// campaign after a backoff. It resigns when ctx ends and returns nil
// then; other errors are etcd failures it could not get past.
func (c *Controller) Run(ctx context.Context) error {
	bo := backoff.New(termRetryMin, termRetryMax)
	for {
		began := time.Now()
		err := c.term(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(began) > termSettled {
			bo.Reset()
		}
		d := bo.Next()
		c.m.StepDowns.Inc()
		c.log.Warn("leadership ended; campaigning again", "error", err, "in", d)
		if !backoff.Sleep(ctx, d) {
			return nil
		}
	}
}

func (c *Controller) term(ctx context.Context) error {
	ttl := max(1, int(c.opt.ElectionTTL.Seconds()))
	sess, err := concurrency.NewSession(c.opt.Client, concurrency.WithTTL(ttl), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("election session: %w", err)
	}
	defer c.revoke(sess, ttl)
	el := concurrency.NewElection(sess, c.opt.Layout.Election())
	if err := c.campaign(ctx, el); err != nil {
		return fmt.Errorf("campaign: %w", err)
	}
	c.log.Info("leading", "id", c.opt.ID, "key", el.Key(), "rev", el.Rev())
	c.leader.Store(true)
	c.m.Leader.Set(1)
	defer func() {
		c.leader.Store(false)
		c.m.Leader.Set(0)
	}()
	// The term ends when etcd says the election lease is gone or a
	// fenced write fails, never because an answer was slow: the
	// session's own keepalive is not what decides (see keepLease).
	lctx, cancel := context.WithCancelCause(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel(nil)
	wg.Go(func() { cancel(c.keepLease(lctx, sess.Lease(), time.Duration(ttl)*time.Second)) })
	err = c.lead(lctx, &store.Fence{Key: el.Key(), Rev: el.Rev()})
	if cause := context.Cause(lctx); errors.Is(cause, errLeaseGone) {
		err = cause
	}
	if errors.Is(err, store.ErrNotLeader) {
		c.log.Warn("deposed: the election key is no longer ours")
	}
	return err
}

// revokeTimeout bounds the revoke of the election lease when a term ends.
const revokeTimeout = 5 * time.Second

// revoke ends a term's session: it revokes the election lease, which
// deletes the candidacy or leadership key with it, so the next controller
// leads at once instead of after the TTL. It runs when ctx has ended (a
// normal stop), so the request has a context of its own, bounded by
// revokeTimeout or the TTL, whichever is shorter: after the TTL etcd has
// dropped the lease anyway. Session.Close would revoke under the
// session's context, the cancelled ctx, and so never reach etcd.
func (c *Controller) revoke(sess *concurrency.Session, ttl int) {
	sess.Orphan() // stops the session's keepalive
	rctx, cancel := context.WithTimeout(context.Background(), min(revokeTimeout, time.Duration(ttl)*time.Second))
	defer cancel()
	if _, err := c.opt.Client.Revoke(rctx, sess.Lease()); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		c.log.Warn("revoke election lease; the next leader waits for its TTL", "lease", fmt.Sprintf("%x", int64(sess.Lease())), "ttl", ttl, "error", err)
	}
}

// errLeaseGone: etcd says the election lease no longer exists.
var errLeaseGone = errors.New("election lease expired")

// keepLease renews the election lease every third of its TTL until ctx
// ends, and returns errLeaseGone once etcd answers that the lease is
// gone. Renewals do not wait for each other: one held up by a slow etcd
// (a huge value being written, a loaded machine) does not hold back the
// next, and one that fails or times out is only retried. The session's
// own keepalive is no measure of the lease: it sends again only a third
// of a TTL after the last answer, on a 500 ms tick, so with a short TTL
// and answers slower than a sixth of it the lease was renewed about once
// a TTL and lapsed; and it gives up on a lease etcd still holds when
// answers are late.
func (c *Controller) keepLease(ctx context.Context, id clientv3.LeaseID, ttl time.Duration) error {
	gone := make(chan error, 1)
	var wg sync.WaitGroup
	defer wg.Wait()
	tick := time.NewTicker(ttl / 3)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-gone:
			return err
		case <-tick.C:
		}
		wg.Go(func() {
			rctx, cancel := context.WithTimeout(ctx, ttl)
			defer cancel()
			_, err := c.opt.Client.KeepAliveOnce(rctx, id)
			if errors.Is(err, rpctypes.ErrLeaseNotFound) {
				select {
				case gone <- fmt.Errorf("%w: lease %x", errLeaseGone, int64(id)):
				default:
				}
			}
		})
	}
}

// electionSweep is how often a campaigning controller looks for keys
// under the election prefix that no controller wrote.
const electionSweep = 2 * time.Second

// campaign campaigns in el. While it waits, it deletes every key under
// the election prefix that is no controller's candidacy (no lease, or
// not {"controller": ...}): such a key, written by hand, sorts before
// later candidates and would hold the election forever.
func (c *Controller) campaign(ctx context.Context, el *concurrency.Election) error {
	sctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		for sctx.Err() == nil {
			// The sweep's requests run under ctx, not sctx: a delete
			// that wins the campaign must still see its answer (and
			// count it) when the campaign returns at once.
			c.sweepElection(ctx)
			if !backoff.Sleep(sctx, electionSweep) {
				return
			}
		}
	})
	defer func() { stop(); wg.Wait() }()
	return el.Campaign(ctx, fmt.Sprintf(`{"controller":%q}`, c.opt.ID))
}

func (c *Controller) sweepElection(ctx context.Context) {
	prefix := c.opt.Layout.Election() + "/"
	r, err := c.opt.Client.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return // the campaign itself waits for etcd
	}
	for _, kv := range r.Kvs {
		verr := validate.ElectionValue(kv.Value, kv.Lease)
		if verr == nil {
			continue
		}
		key := string(kv.Key)
		// Only the value that was judged: a candidacy written since is
		// judged again at the next sweep.
		d, err := c.opt.Client.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)).
			Then(clientv3.OpDelete(key)).Commit()
		if err != nil || !d.Succeeded {
			continue
		}
		c.m.ElectionGarbage.Inc()
		c.log.Warn("deleted a key under the election prefix that is no controller's candidacy", "key", key, "problem", verr)
	}
}
