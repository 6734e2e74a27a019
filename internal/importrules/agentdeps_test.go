package importrules

import (
	"bytes"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// agentExcluded are the import path prefixes weft-agent's binary must not
// link: GoBGP runs in weft-bgp.
var agentExcluded = []string{"github.com/osrg/gobgp"}

// linked returns the packages of deps (go list -deps output, one a line)
// under one of the excluded prefixes.
func linked(deps string, excluded []string) []string {
	var out []string
	for _, d := range strings.Fields(deps) {
		if under(d, excluded) {
			out = append(out, d)
		}
	}
	return out
}

func TestAgentDoesNotLinkGoBGP(t *testing.T) {
	for _, c := range []struct {
		cmd  string
		want bool
	}{{"weft-agent", false}, {"weft-bgp", true}} {
		cmd := exec.Command("go", "list", "-deps", module+"/cmd/"+c.cmd)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", c.cmd, err, stderr.String())
		}
		if !strings.Contains(string(out), module+"/cmd/"+c.cmd) {
			t.Fatalf("go list -deps %s does not list the command itself:\n%s", c.cmd, out)
		}
		got := linked(string(out), agentExcluded)
		if !c.want && len(got) > 0 {
			t.Errorf("%s links %d GoBGP packages (%s, ...): the speaker belongs in weft-bgp (nodeagent/bgp/gobgp), the agent talks to it through nodeagent/bgp/proc",
				c.cmd, len(got), got[0])
		}
		if c.want && len(got) == 0 {
			t.Errorf("%s links no GoBGP package: is the rule's prefix %q still GoBGP's?", c.cmd, agentExcluded)
		}
	}
	if got := linked("github.com/weftnet/weft/nodeagent\ngithub.com/osrg/gobgp/v3/pkg/server\ngithub.com/osrg/gobgpx\n", agentExcluded); !slices.Equal(got, []string{"github.com/osrg/gobgp/v3/pkg/server"}) {
		t.Errorf("made-up deps: %q, want only the GoBGP server", got)
	}
}
