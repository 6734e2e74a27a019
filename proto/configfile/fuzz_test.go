package configfile_test

import (
	"testing"

	"github.com/weftnet/weft/proto/configfile"
	"github.com/weftnet/weft/proto/keys"
	"github.com/weftnet/weft/proto/validate"
)

// FuzzDecodeConfigFile: config files and desired configs (JSON or YAML)
// either decode or fail; a decoded config never spells out a zero that
// ExplicitZero refuses, and its validation does not panic.
func FuzzDecodeConfigFile(f *testing.F) {
	f.Add([]byte("cluster_cidr: 10.0.0.0/8\nnode_mask_size: 24\n"))
	f.Add([]byte(`{"cluster_cidr":"10.0.0.0/8","vni":0}`))
	f.Add([]byte(`{"udpPort":"0"}`))
	f.Add([]byte("- a\n- b\n"))
	f.Add([]byte(`{"bgp":{"asn":65000,"peers":[{"address":"10.0.0.1","asn":65001}]},"backend":"bgp"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, err := configfile.Decode(b)
		if err != nil {
			return
		}
		_ = validate.Config(validate.WithDefaults(cfg))
		if err := configfile.ExplicitZero(keys.Encode(cfg)); err != nil {
			t.Fatalf("protojson of a decoded config spells a zero: %v", err)
		}
	})
}
