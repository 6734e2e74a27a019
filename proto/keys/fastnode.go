package keys

import (
	"math"
	"strings"

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
	p := fastParser{b: b}
	var seen uint8
	// Each string field as a span of b; repeated ones as spans in order.
	var name, ip, mac span
	var cidrBuf, capBuf [4]span
	cidrs, caps := cidrBuf[:0], capBuf[:0]
	n := &weftv1.Node{}
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
			switch string(b[key.from:key.to]) {
			case "name":
				bit = 1 << 0
				name, ok = p.str()
			case "underlay_ip":
				bit = 1 << 1
				ip, ok = p.str()
			case "pod_cidrs":
				bit = 1 << 2
				cidrs, ok = p.strs(cidrs)
			case "vtep_mac":
				bit = 1 << 3
				mac, ok = p.str()
			case "capabilities":
				bit = 1 << 4
				caps, ok = p.strs(caps)
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
	if p.i != len(b) {
		return nil, false
	}
	// The values only, in one string: one allocation per node, no JSON
	// syntax kept alive, and nothing of the caller's buffer.
	size := name.len() + ip.len() + mac.len()
	for _, s := range cidrs {
		size += s.len()
	}
	for _, s := range caps {
		size += s.len()
	}
	var sb strings.Builder
	sb.Grow(size)
	for _, s := range [...]span{name, ip, mac} {
		sb.Write(b[s.from:s.to])
	}
	for _, s := range cidrs {
		sb.Write(b[s.from:s.to])
	}
	for _, s := range caps {
		sb.Write(b[s.from:s.to])
	}
	all, off := sb.String(), 0
	next := func(s span) string {
		v := all[off : off+s.len()]
		off += s.len()
		return v
	}
	n.Name, n.UnderlayIp, n.VtepMac = next(name), next(ip), next(mac)
	if len(cidrs) > 0 {
		n.PodCidrs = make([]string, len(cidrs))
		for i, s := range cidrs {
			n.PodCidrs[i] = next(s)
		}
	}
	if len(caps) > 0 {
		n.Capabilities = make([]string, len(caps))
		for i, s := range caps {
			n.Capabilities[i] = next(s)
		}
	}
	return n, true
}

// span is a string value's bytes in the parser's input, quotes excluded.
type span struct{ from, to int }

func (s span) len() int { return s.to - s.from }

type fastParser struct {
	b []byte
	i int
}

// ws skips JSON whitespace.
func (p *fastParser) ws() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
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
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

// str reads a string of printable ASCII without escapes.
func (p *fastParser) str() (span, bool) {
	if !p.consume('"') {
		return span{}, false
	}
	start := p.i
	for ; p.i < len(p.b); p.i++ {
		switch c := p.b[p.i]; {
		case c == '"':
			p.i++
			return span{start, p.i - 1}, true
		case c < 0x20 || c > 0x7e || c == '\\':
			return span{}, false
		}
	}
	return span{}, false
}

// strs reads an array of such strings, appended to out.
func (p *fastParser) strs(out []span) ([]span, bool) {
	if !p.consume('[') {
		return nil, false
	}
	if p.consume(']') {
		return out, true
	}
	for {
		s, ok := p.str()
		if !ok {
			return nil, false
		}
		out = append(out, s)
		if p.consume(']') {
			return out, true
		}
		if !p.consume(',') {
			return nil, false
		}
	}
}

// uint reads a decimal without sign, fraction, exponent or leading zero,
// in quotes when quoted (protojson writes 64-bit integers so) and bare
// otherwise.
func (p *fastParser) uint(quoted bool) (uint64, bool) {
	p.ws()
	if quoted {
		if p.i >= len(p.b) || p.b[p.i] != '"' {
			return 0, false
		}
		p.i++
	}
	start := p.i
	var v uint64
	for ; p.i < len(p.b) && p.b[p.i] >= '0' && p.b[p.i] <= '9'; p.i++ {
		d := uint64(p.b[p.i] - '0')
		if v > (math.MaxUint64-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	digits := p.i - start
	if digits == 0 || digits > 1 && p.b[start] == '0' {
		return 0, false
	}
	if quoted {
		// protojson wants the closing quote right after the digits.
		if p.i >= len(p.b) || p.b[p.i] != '"' {
			return 0, false
		}
		p.i++
	}
	return v, true
}
