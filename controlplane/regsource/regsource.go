// Package regsource is the node source of clusters without Kubernetes:
// the registrations agents keep under /weft/registrations/ on their lease.
// It lists them, then watches from the next revision; when the watch ends
// or the revision was compacted it lists again (the list+watch pattern).
package regsource

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/controlplane/source"
	"github.com/weftnet/weft/proto/keys"
	"github.com/weftnet/weft/proto/validate"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// Source implements source.Source over the registration keys.
type Source struct {
	c   *clientv3.Client
	k   keys.Layout
	log hclog.Logger
	// Backoff is the pause before re-listing after an error; default 500ms.
	Backoff time.Duration
}

var _ source.Keyed = (*Source)(nil)

// New returns the registration source of the cluster under k.
func New(c *clientv3.Client, k keys.Layout, log hclog.Logger) *Source {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &Source{c: c, k: k, log: log.Named("registrations"), Backoff: 500 * time.Millisecond}
}

// Decode turns one registration key, its value and its lease into a
// Change: an Upsert when the value is a valid registration for the node
// the key names and is on a lease, an Invalid naming the field otherwise
// (a value over validate.MaxRegistrationBytes, undecodable protojson, a
// name that differs from the key's, an invalid field, no lease: a
// registration without one would outlive its agent and never leave). A
// key that names no node is Invalid with its path below the prefix, "/"
// as "_", as Name.
func Decode(k keys.Layout, key string, value []byte, lease int64) source.Change {
	name, err := keys.NameOf(k.Registrations(), key)
	if err != nil {
		return source.Change{Kind: source.Invalid, Name: keyName(k, key), Err: err}
	}
	if err := validate.StoredRegistration(name, value, lease); err != nil {
		return source.Change{Kind: source.Invalid, Name: name, Err: err}
	}
	r, _ := keys.DecodeRegistration(value) // StoredRegistration decoded it
	if r.Name == "" {
		r.Name = name
	}
	return source.Change{Kind: source.Upsert, Name: name, Registration: r}
}

// Key is the registration key of node name: its presence is the node's
// entry in this source.
func (s *Source) Key(name string) string { return s.k.Registration(name) }

// Run lists and watches until ctx ends, then returns ctx's error.
func (s *Source) Run(ctx context.Context, sync func([]source.Change), changes func(source.Change)) error {
	for {
		err := s.once(ctx, sync, changes)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.log.Warn("registration watch ended; listing again", "error", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(s.Backoff):
		}
	}
}

func (s *Source) once(ctx context.Context, sync func([]source.Change), changes func(source.Change)) error {
	r, err := s.c.Get(ctx, s.k.Registrations(), clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("list registrations: %w", err)
	}
	all := make([]source.Change, 0, len(r.Kvs))
	for _, kv := range r.Kvs {
		all = append(all, Decode(s.k, string(kv.Key), kv.Value, kv.Lease))
	}
	sync(all)
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wc := s.c.Watch(wctx, s.k.Registrations(), clientv3.WithPrefix(), clientv3.WithRev(r.Header.Revision+1))
	for resp := range wc {
		if err := resp.Err(); err != nil {
			return fmt.Errorf("watch registrations: %w", err)
		}
		for _, ev := range resp.Events {
			key := string(ev.Kv.Key)
			switch ev.Type {
			case mvccpb.PUT:
				changes(Decode(s.k, key, ev.Kv.Value, ev.Kv.Lease))
			case mvccpb.DELETE:
				name, err := keys.NameOf(s.k.Registrations(), key)
				if err != nil {
					name = keyName(s.k, key)
				}
				changes(source.Change{Kind: source.Gone, Name: name})
			}
		}
	}
	return errors.New("watch registrations: channel closed")
}

// keyName turns a key that names no node (a/b under the prefix) into a
// name usable as a problem key.
func keyName(k keys.Layout, key string) string {
	return strings.ReplaceAll(strings.TrimPrefix(key, k.Registrations()), "/", "_")
}

// Registration is a helper for tests and agents: the value to write.
func Registration(r *weftv1.Registration) string { return keys.EncodeString(r) }
