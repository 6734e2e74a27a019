package validate

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/weftnet/weft/proto/keys"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// Kinds of stored keys, as Stored names them.
const (
	KindConfig        = "config"
	KindDesiredConfig = "desired config"
	KindDesiredStatus = "desired status"
	KindHead          = "head"
	KindEvent         = "event"
	KindNode          = "node"
	KindSubnet        = "subnet guard"
	KindRegistration  = "registration"
	KindStatus        = "status"
	KindProblem       = "problem"
	KindElection      = "election"
	KindUnknown       = "unknown"
)

// Stored decodes and checks one key under the layout k and its value the
// way the component that reads it does, whatever its kind, and returns
// the kind and nil, or the kind and an error naming the field at fault.
// lease is the key's lease (0 for none): registrations and election keys
// must have one. cfg is the config in force (nil when unknown), which
// values of nodes (not of events, written under older configs) are
// checked against. weftctl check runs it on every key
// under the prefix.
func Stored(k keys.Layout, key string, value []byte, lease int64, cfg *weftv1.ClusterConfig) (string, error) {
	kind, err := stored(k, key, value, lease, cfg)
	if err != nil {
		return kind, fmt.Errorf("%s %s: %w", kind, key, err)
	}
	return kind, nil
}

func stored(k keys.Layout, key string, value []byte, lease int64, cfg *weftv1.ClusterConfig) (string, error) {
	under := func(prefix string) (string, bool, error) {
		if !strings.HasPrefix(key, prefix) {
			return "", false, nil
		}
		name, err := keys.NameOf(prefix, key)
		return name, true, err
	}
	switch key {
	case k.Config(), k.DesiredConfig():
		kind := KindConfig
		if key == k.DesiredConfig() {
			kind = KindDesiredConfig
		}
		if err := Size("cluster config", len(value), MaxConfigBytes); err != nil {
			return kind, err
		}
		c, err := keys.DecodeConfig(value)
		if err != nil || kind == KindDesiredConfig {
			// A desired config that decodes but does not validate is
			// answered at the desired status, not garbage.
			return kind, err
		}
		return kind, Config(WithDefaults(c))
	case k.DesiredStatus():
		_, err := keys.DecodeConfigStatus(value)
		return KindDesiredStatus, err
	case k.Head():
		if len(value) > 20 {
			return KindHead, fieldErr("value", "%d characters is not a seq", len(value))
		}
		_, err := keys.ParseHead(value)
		return KindHead, err
	}
	if strings.HasPrefix(key, k.Events()) {
		seq, err := k.EventSeq(key)
		if err != nil {
			return KindEvent, err
		}
		if err := Size("event", len(value), MaxEventBytes); err != nil {
			return KindEvent, err
		}
		e, err := keys.DecodeEvent(value)
		if err != nil {
			return KindEvent, err
		}
		if e.Seq != seq {
			return KindEvent, fieldErr("seq", "%d does not match its key's seq %d", e.Seq, seq)
		}
		// An event is checked against no config: older events were
		// written under older configs.
		return KindEvent, Event(nil, e)
	}
	if name, ok, err := under(k.Nodes()); ok {
		if err != nil {
			return KindNode, err
		}
		if err := Size("node", len(value), MaxNodeBytes); err != nil {
			return KindNode, err
		}
		n, err := keys.DecodeNode(value)
		if err != nil {
			return KindNode, err
		}
		if n.Name != name {
			return KindNode, fieldErr("name", "%q does not match its key %q", n.Name, name)
		}
		return KindNode, Node(cfg, n)
	}
	if name, ok, err := under(k.Subnets()); ok {
		if err != nil {
			return KindSubnet, err
		}
		if _, err := keys.ParseSubnetName(name); err != nil {
			return KindSubnet, err
		}
		if err := keys.ValidName(string(value)); err != nil {
			return KindSubnet, fieldErr("value", "owner: %v", err)
		}
		return KindSubnet, nil
	}
	if name, ok, err := under(k.Registrations()); ok {
		if err != nil {
			return KindRegistration, err
		}
		return KindRegistration, StoredRegistration(name, value, lease)
	}
	if name, ok, err := under(k.Statuses()); ok {
		if err != nil {
			return KindStatus, err
		}
		if err := Size("status", len(value), MaxStatusBytes); err != nil {
			return KindStatus, err
		}
		s, err := keys.DecodeStatus(value)
		if err != nil {
			return KindStatus, err
		}
		return KindStatus, Status(name, s)
	}
	if _, ok, err := under(k.Problems()); ok {
		if err != nil {
			return KindProblem, err
		}
		if err := Size("problem", len(value), MaxProblemBytes); err != nil {
			return KindProblem, err
		}
		_, err := keys.DecodeProblem(value)
		return KindProblem, err
	}
	if strings.HasPrefix(key, k.Election()+"/") {
		return KindElection, ElectionValue(value, lease)
	}
	return KindUnknown, fieldErr("key", "not a key of weft's layout")
}

// StoredRegistration checks a registration as stored at the key of node
// name: its size, that it decodes, names that node (an empty name means
// the key's), passes Registration, and is on a lease (a registration
// without one would outlive its agent).
func StoredRegistration(name string, value []byte, lease int64) error {
	if err := Size("registration", len(value), MaxRegistrationBytes); err != nil {
		return err
	}
	r, err := keys.DecodeRegistration(value)
	if err != nil {
		return err
	}
	if r.Name == "" {
		r.Name = name
	}
	if r.Name != name {
		return fieldErr("name", "%q registered under key of %q", r.Name, name)
	}
	if err := Registration(r); err != nil {
		return err
	}
	if lease == 0 {
		return fieldErr("lease", "none: a registration must be on its agent's lease")
	}
	return nil
}

// ElectionValue checks a key under the election prefix: a controller's
// candidacy is on its session's lease and says {"controller": "<id>"}.
func ElectionValue(value []byte, lease int64) error {
	if lease == 0 {
		return fieldErr("lease", "none: no controller's candidacy")
	}
	var v struct {
		Controller string `json:"controller"`
	}
	if err := json.Unmarshal(value, &v); err != nil {
		return fieldErr("value", "not a controller's candidacy: %v", err)
	}
	if v.Controller == "" || len(v.Controller) > 512 {
		return fieldErr("controller", "want a controller's id of 1..512 characters")
	}
	return nil
}
