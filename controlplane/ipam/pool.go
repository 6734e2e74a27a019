package ipam

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// u128 is an address as a 128-bit number (IPv4 in the low 32 bits).
type u128 struct{ hi, lo uint64 }

func addrU128(a netip.Addr) u128 {
	if a.Is4() {
		b := a.As4()
		return u128{lo: uint64(binary.BigEndian.Uint32(b[:]))}
	}
	b := a.As16()
	return u128{hi: binary.BigEndian.Uint64(b[:8]), lo: binary.BigEndian.Uint64(b[8:])}
}

func (u u128) addr(is4 bool) netip.Addr {
	if is4 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(u.lo))
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], u.hi)
	binary.BigEndian.PutUint64(b[8:], u.lo)
	return netip.AddrFrom16(b)
}

func (u u128) shl(n uint) u128 {
	switch {
	case n == 0:
		return u
	case n >= 128:
		return u128{}
	case n >= 64:
		return u128{hi: u.lo << (n - 64)}
	default:
		return u128{hi: u.hi<<n | u.lo>>(64-n), lo: u.lo << n}
	}
}

func (u u128) shr(n uint) u128 {
	switch {
	case n == 0:
		return u
	case n >= 128:
		return u128{}
	case n >= 64:
		return u128{lo: u.hi >> (n - 64)}
	default:
		return u128{hi: u.hi >> n, lo: u.lo>>n | u.hi<<(64-n)}
	}
}

// maxIndexBits caps how many subnets a pool enumerates: 2^62 is more than
// any cluster can use, and keeps indexes in a uint64.
const maxIndexBits = 62

// pool hands out the subnets of one family: the node_mask_size prefixes of
// the cluster CIDR, by index. Allocation scans from a cursor that only
// moves forward (wrapping), so handing out n subnets costs O(n) in total
// while few are freed.
type pool struct {
	cluster netip.Prefix
	mask    int
	shift   uint   // address bits below a subnet
	n       uint64 // number of subnets (capped at 2^maxIndexBits)
	used    map[uint64]string
	next    uint64
}

func newPool(cluster netip.Prefix, mask int) (*pool, error) {
	cluster = cluster.Masked()
	bl := cluster.Addr().BitLen()
	if mask <= cluster.Bits() || mask > bl {
		return nil, fmt.Errorf("pool %s: node mask /%d does not fit", cluster, mask)
	}
	ib := mask - cluster.Bits()
	if ib > maxIndexBits {
		ib = maxIndexBits
	}
	return &pool{
		cluster: cluster,
		mask:    mask,
		shift:   uint(bl - mask),
		n:       uint64(1) << ib,
		used:    map[uint64]string{},
	}, nil
}

func (p *pool) prefix(i uint64) netip.Prefix {
	base := addrU128(p.cluster.Addr())
	off := u128{lo: i}.shl(p.shift)
	a := u128{hi: base.hi | off.hi, lo: base.lo | off.lo}.addr(p.cluster.Addr().Is4())
	return netip.PrefixFrom(a, p.mask)
}

// index returns the index of s when s is one of the pool's subnets.
func (p *pool) index(s netip.Prefix) (uint64, bool) {
	if s.Bits() != p.mask || s != s.Masked() || !p.cluster.Contains(s.Addr()) {
		return 0, false
	}
	ib := uint(p.mask - p.cluster.Bits())
	v := addrU128(s.Addr()).shr(p.shift)
	eff := min(ib, maxIndexBits)
	if ib > eff {
		// Only the first 2^62 subnets are enumerated: the index bits
		// above them must be zero.
		if k := ib - eff; v.shr(eff).shl(128-k) != (u128{}) {
			return 0, false
		}
	}
	i := v.lo & (1<<eff - 1)
	return i, true
}

func (p *pool) take() (netip.Prefix, uint64, bool) {
	if uint64(len(p.used)) >= p.n {
		return netip.Prefix{}, 0, false
	}
	for {
		i := p.next
		p.next++
		if p.next >= p.n {
			p.next = 0
		}
		if _, ok := p.used[i]; !ok {
			return p.prefix(i), i, true
		}
	}
}
