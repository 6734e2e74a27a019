// Package keys owns weft's etcd key layout and the encoding of the values
// stored under it. The controller, the agent and weftctl all build keys
// here, so the layout documented in docs/DESIGN.md has one implementation.
package keys

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// DefaultPrefix is the key prefix used when none is configured.
const DefaultPrefix = "/weft"

// seqDigits is the width of the zero-padded seq in event keys, so that
// lexical key order is seq order.
const seqDigits = 20

// ErrBadKey is returned (wrapped) when a key does not have the expected form.
var ErrBadKey = errors.New("keys: malformed key")

// Layout builds the keys of one cluster under Prefix. The zero value uses
// DefaultPrefix.
type Layout struct {
	Prefix string
}

// New returns the layout for prefix, normalised to start with "/" and to
// carry no trailing "/".
func New(prefix string) Layout {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !strings.HasPrefix(prefix, "/") {
		prefix = "/" + prefix
	}
	return Layout{Prefix: strings.TrimRight(prefix, "/")}
}

func (l Layout) p() string {
	if l.Prefix == "" {
		return DefaultPrefix
	}
	return l.Prefix
}

// Root is the prefix of every key of the cluster, with a trailing "/".
func (l Layout) Root() string { return l.p() + "/" }

// Config is the ClusterConfig in force (projection, written by the controller).
func (l Layout) Config() string { return l.p() + "/config" }

// DesiredConfig is the ClusterConfig an operator asks for.
func (l Layout) DesiredConfig() string { return l.p() + "/desired/config" }

// DesiredStatus is the controller's ConfigStatus answer to DesiredConfig.
func (l Layout) DesiredStatus() string { return l.p() + "/desired/status" }

// Head holds the seq of the last event, as decimal text.
func (l Layout) Head() string { return l.p() + "/head" }

// Events is the prefix of the event log.
func (l Layout) Events() string { return l.p() + "/events/" }

// Event is the key of the event with the given seq.
func (l Layout) Event(seq uint64) string {
	return fmt.Sprintf("%s%0*d", l.Events(), seqDigits, seq)
}

// EventSeq parses the seq out of an event key.
func (l Layout) EventSeq(key string) (uint64, error) {
	s, ok := strings.CutPrefix(key, l.Events())
	if !ok || len(s) != seqDigits {
		return 0, fmt.Errorf("%w: %q is not an event key", ErrBadKey, key)
	}
	seq, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: event key %q: %v", ErrBadKey, key, err)
	}
	return seq, nil
}

// Nodes is the prefix of the node projection.
func (l Layout) Nodes() string { return l.p() + "/nodes/" }

// Node is the projection key of one node.
func (l Layout) Node(name string) string { return l.Nodes() + name }

// Subnets is the prefix of the subnet uniqueness guards.
func (l Layout) Subnets() string { return l.p() + "/subnets/" }

// Subnet is the guard key of one pod CIDR; its value is the owning node.
func (l Layout) Subnet(p netip.Prefix) string {
	return l.Subnets() + SubnetName(p)
}

// Registrations is the prefix of agent registrations.
func (l Layout) Registrations() string { return l.p() + "/registrations/" }

// Registration is the key an agent registers at, on its lease.
func (l Layout) Registration(name string) string { return l.Registrations() + name }

// Statuses is the prefix of agent status reports.
func (l Layout) Statuses() string { return l.p() + "/status/" }

// Status is the key an agent reports its AgentStatus at, on its lease.
func (l Layout) Status(name string) string { return l.Statuses() + name }

// Problems is the prefix of the controller's recorded refusals.
func (l Layout) Problems() string { return l.p() + "/problems/" }

// Problem is the key of the refusal recorded for one node.
func (l Layout) Problem(name string) string { return l.Problems() + name }

// Election is the prefix the controllers elect their leader under.
func (l Layout) Election() string { return l.p() + "/election" }

// NameOf returns the last path element of key after prefix, e.g. the node
// name of a /weft/nodes/<name> key.
func NameOf(prefix, key string) (string, error) {
	s, ok := strings.CutPrefix(key, prefix)
	if !ok || s == "" || strings.Contains(s, "/") {
		return "", fmt.Errorf("%w: %q is not under %q", ErrBadKey, key, prefix)
	}
	return s, nil
}

// SubnetName renders a prefix the way subnet keys spell it: "/" as "-".
func SubnetName(p netip.Prefix) string {
	return strings.ReplaceAll(p.Masked().String(), "/", "-")
}

// ParseSubnetName is the inverse of SubnetName.
func ParseSubnetName(s string) (netip.Prefix, error) {
	i := strings.LastIndexByte(s, '-')
	if i < 0 {
		return netip.Prefix{}, fmt.Errorf("%w: subnet name %q has no '-'", ErrBadKey, s)
	}
	p, err := netip.ParsePrefix(s[:i] + "/" + s[i+1:])
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%w: subnet name %q: %v", ErrBadKey, s, err)
	}
	return p, nil
}

// ValidName reports whether name can be a node name: a DNS-1123 subdomain
// style string without "/" that fits in a key.
func ValidName(name string) error {
	if name == "" {
		return errors.New("node name is empty")
	}
	if len(name) > 253 {
		return fmt.Errorf("node name %q is longer than 253 characters", name)
	}
	for _, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '.', r == '_':
		case r >= 'A' && r <= 'Z':
		default:
			return fmt.Errorf("node name %q contains %q", name, r)
		}
	}
	return nil
}

// ValidPrefix checks a cluster's key prefix as an operator gives it
// (--prefix): "/"-separated segments of letters, digits, '-', '.' and
// '_', none of them empty, "." or "..", with the leading "/" optional
// and one trailing "/" allowed (New adds the one and drops the other). A
// prefix New would silently turn into another cluster's is refused: ""
// and "/" would be DefaultPrefix, "/a//b" would be a prefix no other
// component spells the same way.
func ValidPrefix(prefix string) error {
	p := strings.TrimSuffix(strings.TrimPrefix(prefix, "/"), "/")
	if p == "" {
		return fmt.Errorf("prefix %q names no key prefix (the default is %s)", prefix, DefaultPrefix)
	}
	if len(prefix) > 128 {
		return fmt.Errorf("prefix %q is longer than 128 characters", prefix)
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("prefix %q has an empty, \".\" or \"..\" segment", prefix)
		}
		for _, r := range seg {
			switch {
			case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '.', r == '_':
			default:
				return fmt.Errorf("prefix %q contains %q", prefix, r)
			}
		}
	}
	return nil
}

// FormatHead renders a head value.
func FormatHead(seq uint64) string { return strconv.FormatUint(seq, 10) }

// ParseHead parses a head value; an empty value is seq 0 (empty log).
func ParseHead(v []byte) (uint64, error) {
	if len(v) == 0 {
		return 0, nil
	}
	seq, err := strconv.ParseUint(strings.TrimSpace(string(v)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("decode head %q: %w", v, err)
	}
	return seq, nil
}
