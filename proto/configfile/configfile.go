// Package configfile reads a ClusterConfig the way an operator writes one:
// a --config file of weft-controller, the FILE of `weftctl config set`, or
// a value put at /weft/desired/config with etcdctl. It accepts protojson
// or YAML with the proto field names and refuses a 0 spelled out where 0
// is never valid, instead of reading it as "use the default".
package configfile

import (
	"encoding/json"
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/weftnet/weft/proto/validate"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// ExplicitZero refuses a JSON config that spells out 0 for a field where
// 0 is never valid (vni, udp_port, node_mask_size). proto3 cannot tell an
// omitted field from 0, and an omitted field gets its default; a written
// 0 is a mistake the operator should hear about, not a silent default.
func ExplicitZero(j []byte) error {
	var m map[string]json.RawMessage
	if json.Unmarshal(j, &m) != nil {
		return nil // not an object: the decoder reports it
	}
	for _, f := range []struct{ proto, camel, why string }{
		{"vni", "vni", fmt.Sprintf("0 is outside 1..%d", validate.MaxVNI)},
		{"udp_port", "udpPort", "0 is not a UDP port (1..65535)"},
		{"node_mask_size", "nodeMaskSize", "/0 gives fewer than two subnets of the cluster CIDR"},
	} {
		for _, name := range []string{f.proto, f.camel} {
			if v, ok := m[name]; ok && (string(v) == "0" || string(v) == `"0"`) {
				return fmt.Errorf("%w: %s: %s", validate.ErrInvalid, f.proto, f.why)
			}
		}
	}
	return nil
}

// Decode decodes a ClusterConfig written as protojson or as
// YAML with the same field names (DecodeJSON).
func Decode(b []byte) (*weftv1.ClusterConfig, error) {
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		return nil, fmt.Errorf("decode config file: %w", err)
	}
	return DecodeJSON(j)
}

// strict refuses fields the schema does not have: an operator's
// "node_grace_second: 120" or "mut: 1400" would otherwise be dropped and
// the config accepted without the change asked for (keys.DecodeConfig, for
// the values weft itself wrote, discards them).
var strict = protojson.UnmarshalOptions{}

// DecodeJSON decodes a ClusterConfig an operator wrote as protojson (a
// desired config, a converted file), refusing explicit zeros
// (ExplicitZero) and fields the schema does not have, naming them.
func DecodeJSON(j []byte) (*weftv1.ClusterConfig, error) {
	if err := ExplicitZero(j); err != nil {
		return nil, err
	}
	cfg := &weftv1.ClusterConfig{}
	if err := strict.Unmarshal(j, cfg); err != nil {
		return nil, fmt.Errorf("decode cluster config: %w", err)
	}
	return cfg, nil
}
