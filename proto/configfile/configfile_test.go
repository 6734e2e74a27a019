package configfile_test

import (
	"strings"
	"testing"

	"github.com/weftnet/weft/proto/configfile"
)

// TestUnknownFieldRefused: a field the schema does not have, in YAML or
// JSON, at the top or in a nested message, is refused naming it, not
// dropped; both spellings of known fields still decode.
func TestUnknownFieldRefused(t *testing.T) {
	for _, tc := range []struct{ in, field string }{
		{"cluster_cidr: 10.244.0.0/16\nnode_grace_second: 120\n", "node_grace_second"},
		{`{"cluster_cidr":"10.244.0.0/16","mut":1400}`, "mut"},
		{`{"backend":"bgp","bgp":{"asn":65000,"peer":[{"address":"10.0.0.1"}]}}`, "peer"},
	} {
		if _, err := configfile.Decode([]byte(tc.in)); err == nil || !strings.Contains(err.Error(), `unknown field "`+tc.field+`"`) {
			t.Errorf("%q: %v, want a refusal naming %q", tc.in, err, tc.field)
		}
	}
	cfg, err := configfile.Decode([]byte("cluster_cidr: 10.244.0.0/16\nnodeGraceSeconds: 120\nmtu: 1400\n"))
	if err != nil || cfg.NodeGraceSeconds != 120 || cfg.Mtu != 1400 {
		t.Fatalf("known fields: %v %v", cfg, err)
	}
}
