package nodeagent

import (
	"slices"

	"github.com/weftnet/weft/nodeagent/model"
)

// logBigTCPNotes logs, once per change, why a family the config asks BIG
// TCP for keeps 64 KiB on this node.
func (l *loop) logBigTCPNotes(plan model.Plan) {
	if slices.Equal(plan.BigTCPNotes, l.bigTCPNotes) {
		return
	}
	l.bigTCPNotes = plan.BigTCPNotes
	for _, n := range plan.BigTCPNotes {
		l.a.log.Warn("big tcp not used", "reason", n)
	}
}
