// Package nft manages weft's nftables table (family inet) that masquerades
// pod traffic leaving the pod network.
package nft

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/bpf/spec"
)

// Table is the nftables table (family inet) weft owns.
const Table = "weft"

const chain = "postrouting"

// Rule is one rule of the postrouting chain: traffic from Src to Dst
// returns (keeps the pod address) when Dst is valid, else it is
// masqueraded.
type Rule struct {
	Src, Dst netip.Prefix
}

func (r Rule) String() string {
	if r.Dst.IsValid() {
		return fmt.Sprintf("weft: %s -> %s keep", r.Src, r.Dst)
	}
	return fmt.Sprintf("weft: %s masquerade", r.Src)
}

// Rules lists the chain's rules for m in order: for each local pod CIDR, a
// return rule per native CIDR of the same family, then masquerade.
func Rules(m *spec.Masquerade) []Rule {
	if m == nil {
		return nil
	}
	var out []Rule
	for _, src := range m.PodCIDRs {
		src = src.Masked()
		for _, dst := range m.NativeCIDRs {
			dst = dst.Masked()
			if dst.Addr().Is4() == src.Addr().Is4() {
				out = append(out, Rule{Src: src, Dst: dst})
			}
		}
		out = append(out, Rule{Src: src})
	}
	return out
}

// Signature names the rule set as Read reports it.
func Signature(rules []Rule) []string {
	out := make([]string, len(rules))
	for i, r := range rules {
		out[i] = r.String()
	}
	return out
}

func matchPrefix(p netip.Prefix, dst bool) []expr.Any {
	var off uint32
	var proto byte
	size := uint32(4)
	if p.Addr().Is4() {
		proto, off = unix.NFPROTO_IPV4, 12
		if dst {
			off = 16
		}
	} else {
		proto, off, size = unix.NFPROTO_IPV6, 8, 16
		if dst {
			off = 24
		}
	}
	mask := net.CIDRMask(p.Bits(), p.Addr().BitLen())
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: size},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: size, Mask: mask, Xor: make([]byte, size)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Addr().AsSlice()},
	}
}

func (r Rule) exprs() []expr.Any {
	e := matchPrefix(r.Src, false)
	if r.Dst.IsValid() {
		e = append(e, matchPrefix(r.Dst, true)...)
		return append(e, &expr.Verdict{Kind: expr.VerdictReturn})
	}
	return append(e, &expr.Masq{})
}

var table = &nftables.Table{Name: Table, Family: nftables.TableFamilyINet}

// Read returns the descriptions of the rules in weft's chain and whether
// the table exists.
func Read(c *nftables.Conn) ([]string, bool, error) {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, false, fmt.Errorf("list nftables tables: %w", err)
	}
	found := false
	for _, t := range tables {
		if t.Name == Table {
			found = true
		}
	}
	if !found {
		return nil, false, nil
	}
	rules, err := c.GetRules(table, &nftables.Chain{Name: chain, Table: table})
	if err != nil {
		// The table exists without our chain: report it as present and empty.
		return []string{}, true, nil
	}
	out := make([]string, 0, len(rules))
	for _, r := range rules {
		out = append(out, string(bytes.TrimRight(r.UserData, "\x00")))
	}
	return out, true, nil
}

// Write replaces weft's table with rules in one transaction, or deletes it
// when rules is nil (exists says whether there is one to delete).
func Write(c *nftables.Conn, rules []Rule, exists bool) error {
	if rules == nil {
		if !exists {
			return nil
		}
		c.DelTable(table)
		if err := c.Flush(); err != nil {
			return fmt.Errorf("delete nftables table %s: %w", Table, err)
		}
		return nil
	}
	if exists {
		c.DelTable(table)
	}
	t := c.AddTable(table)
	ch := c.AddChain(&nftables.Chain{
		Name:     chain,
		Table:    t,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
	})
	for _, r := range rules {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: r.exprs(), UserData: []byte(r.String())})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("write nftables table %s: %w", Table, err)
	}
	return nil
}
