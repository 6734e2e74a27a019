// Package source defines where the controller learns which nodes exist.
// The registration source (agents' leased keys in etcd) and the Kubernetes
// source (Node objects) both implement Source; the controller turns what
// they report into NodeAdded, NodeUpdated and NodeRemoved events.
package source

import (
	"context"

	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// Kind is what happened to a node in a source.
type Kind int

const (
	// Upsert: the node exists with Registration as its wanted state.
	Upsert Kind = iota
	// Gone: the node disappeared from the source. With Immediate false
	// (an expired agent lease) the controller waits the configured grace
	// period before NodeRemoved, and a node that comes back keeps its
	// CIDR; with Immediate true (a deleted Kubernetes Node) it removes it
	// at once. A Gone with Err (a Node outside the Kubernetes node
	// selector) has Err recorded as the node's problem and used as the
	// removal reason.
	Gone
	// Invalid: the source holds an entry for Name it cannot use; Err says
	// why. The controller records the reason and keeps everything else.
	Invalid
)

// Change is one report from a source.
type Change struct {
	Kind         Kind
	Name         string
	Registration *weftv1.Registration
	Immediate    bool
	Err          error
}

// Source reports nodes. Run first calls sync with the complete current
// set (every node the source knows, as Upserts and Invalids), then calls
// changes for each later change, until ctx ends or the source fails. After
// a failure or an internal re-list it calls sync again with a complete set;
// the controller treats any known node missing from a sync as Gone.
// Callbacks are never called concurrently.
type Source interface {
	Run(ctx context.Context, sync func([]Change), changes func(Change)) error
}

// Keyed is a Source whose entries are etcd keys (the registrations). Key
// names the key that holds name's entry: the controller removes a node
// only in a transaction that requires that key to be absent, so an entry
// that came back while the removal was decided wins. A source whose
// entries live elsewhere (Kubernetes Nodes) is not Keyed: its word that a
// node is gone is the evidence, whatever else etcd holds for the node (an
// agent keeps its registration there on every cluster).
type Keyed interface {
	Source
	Key(name string) string
}
