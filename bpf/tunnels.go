package bpf

import (
	"net/netip"
	"slices"

	"github.com/weftnet/weft/bpf/internal/object"
	"github.com/weftnet/weft/bpf/spec"
)

// tunnelDiff is what a sync writes to the tunnel map.
type tunnelDiff struct {
	Add, Update []spec.Tunnel
	Delete      []netip.Prefix
}

func (d tunnelDiff) empty() bool { return len(d.Add)+len(d.Update)+len(d.Delete) == 0 }

func cmpPrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// diffTunnels compares the map content have (sorted by prefix, unique)
// with want and returns the writes plus the content after them. A later
// entry for the same prefix in want wins.
//
// The common case of an agent's Sync (same prefixes, in Normalize order,
// a few endpoints changed) is one pass without allocation and updates have
// in place; anything else is a merge of two sorted slices. Neither hashes,
// so a one-entry change in 50,000 costs a linear scan only.
func diffTunnels(have, want []spec.Tunnel) (tunnelDiff, []spec.Tunnel) {
	var d tunnelDiff
	if len(want) == len(have) {
		same := true
		for i := range want {
			if want[i] == have[i] {
				continue // have is normalized, so want[i] is too
			}
			t := object.NormTunnel(want[i])
			if t.Prefix != have[i].Prefix {
				same = false
				break
			}
			if t != have[i] {
				d.Update = append(d.Update, t)
			}
		}
		if same {
			if len(d.Update) > 0 {
				// Apply to a copy only where needed: have is ours.
				j := 0
				for i := range have {
					if j < len(d.Update) && have[i].Prefix == d.Update[j].Prefix {
						have[i] = d.Update[j]
						j++
					}
				}
			}
			return d, have
		}
		d.Update = nil
	}
	w := make([]spec.Tunnel, len(want))
	for i, t := range want {
		w[i] = object.NormTunnel(t)
	}
	slices.SortStableFunc(w, func(a, b spec.Tunnel) int { return cmpPrefix(a.Prefix, b.Prefix) })
	// Deduplicate, keeping the last entry of each prefix.
	out := w[:0]
	for i := range w {
		if i+1 < len(w) && w[i+1].Prefix == w[i].Prefix {
			continue
		}
		out = append(out, w[i])
	}
	w = out
	// Sized for what is new at once: at a cold start that is every
	// tunnel, thousands of them.
	d.Add = make([]spec.Tunnel, 0, max(len(w)-len(have), 0))
	i, j := 0, 0
	for i < len(have) || j < len(w) {
		switch {
		case j == len(w) || (i < len(have) && cmpPrefix(have[i].Prefix, w[j].Prefix) < 0):
			d.Delete = append(d.Delete, have[i].Prefix)
			i++
		case i == len(have) || cmpPrefix(have[i].Prefix, w[j].Prefix) > 0:
			d.Add = append(d.Add, w[j])
			j++
		default:
			if have[i] != w[j] {
				d.Update = append(d.Update, w[j])
			}
			i++
			j++
		}
	}
	return d, w
}
