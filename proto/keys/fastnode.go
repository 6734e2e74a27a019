package keys

import (
	"math"

	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// fastNode decodes the Node values weft itself writes (Encode's output:
// proto field names, plain ASCII strings, seq as a quoted decimal) about
// seven times faster than protojson, which is most of an agent's cold
// start with thousands of nodes. It accepts only a strict subset of what
// protojson accepts, every field at most once: anything else (an unknown
// field, a JSON name, an escape, a null, a number in another form,
// trailing bytes) makes it report false, and the caller decodes with
// protojson, so its errors and its reading of unusual input are the only
// ones. FuzzFastNode checks that whatever it accepts protojson decodes to
// the same message.
func fastNode(b []byte) (*weftv1.Node, bool) {
	// One string holds every field's text: one allocation per node, and
	// the node keeps no bytes of the caller's buffer.
	p := fastParser{s: string(b)}
	n := &weftv1.Node{}
	var seen uint8
	if !p.consume('{') {
		return nil, false
	}
	if !p.consume('}') {
		for {
			key, ok := p.str()
			if !ok || !p.consume(':') {
				return nil, false
			}
			var bit uint8
			switch key {
			case "name":
				bit, ok = 1<<0, p.strInto(&n.Name)
			case "underlay_ip":
				bit, ok = 1<<1, p.strInto(&n.UnderlayIp)
			case "pod_cidrs":
				bit, ok = 1<<2, p.strs(&n.PodCidrs)
			case "vtep_mac":
				bit, ok = 1<<3, p.strInto(&n.VtepMac)
			case "capabilities":
				bit, ok = 1<<4, p.strs(&n.Capabilities)
			case "asn":
				var v uint64
				v, ok = p.uint(false)
				bit, ok = 1<<5, ok && v <= math.MaxUint32
				n.Asn = uint32(v)
			case "seq":
				bit = 1 << 6
				n.Seq, ok = p.uint(true)
			default:
				return nil, false
			}
			if !ok || seen&bit != 0 {
				return nil, false
			}
			seen |= bit
			if p.consume('}') {
				break
			}
			if !p.consume(',') {
				return nil, false
			}
		}
	}
	p.ws()
	return n, p.i == len(p.s)
}

type fastParser struct {
	s string
	i int
}

// ws skips JSON whitespace.
func (p *fastParser) ws() {
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

// consume skips whitespace and then c, reporting whether c was there.
func (p *fastParser) consume(c byte) bool {
	p.ws()
	if p.i < len(p.s) && p.s[p.i] == c {
		p.i++
		return true
	}
	return false
}

// str reads a string of printable ASCII without escapes.
func (p *fastParser) str() (string, bool) {
	if !p.consume('"') {
		return "", false
	}
	start := p.i
	for ; p.i < len(p.s); p.i++ {
		switch c := p.s[p.i]; {
		case c == '"':
			p.i++
			return p.s[start : p.i-1], true
		case c < 0x20 || c > 0x7e || c == '\\':
			return "", false
		}
	}
	return "", false
}

func (p *fastParser) strInto(dst *string) bool {
	s, ok := p.str()
	*dst = s
	return ok
}

// strs reads an array of such strings; an empty array leaves *dst nil.
func (p *fastParser) strs(dst *[]string) bool {
	if !p.consume('[') {
		return false
	}
	if p.consume(']') {
		return true
	}
	for {
		s, ok := p.str()
		if !ok {
			return false
		}
		*dst = append(*dst, s)
		if p.consume(']') {
			return true
		}
		if !p.consume(',') {
			return false
		}
	}
}

// uint reads a decimal without sign, fraction, exponent or leading zero,
// in quotes when quoted (protojson writes 64-bit integers so) and bare
// otherwise.
func (p *fastParser) uint(quoted bool) (uint64, bool) {
	p.ws()
	if quoted {
		if p.i >= len(p.s) || p.s[p.i] != '"' {
			return 0, false
		}
		p.i++
	}
	start := p.i
	var v uint64
	for ; p.i < len(p.s) && p.s[p.i] >= '0' && p.s[p.i] <= '9'; p.i++ {
		d := uint64(p.s[p.i] - '0')
		if v > (math.MaxUint64-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	digits := p.i - start
	if digits == 0 || digits > 1 && p.s[start] == '0' {
		return 0, false
	}
	if quoted {
		// protojson wants the closing quote right after the digits.
		if p.i >= len(p.s) || p.s[p.i] != '"' {
			return 0, false
		}
		p.i++
	}
	return v, true
}
