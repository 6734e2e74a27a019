package cni

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ErrNoSubnetFile means the agent has not written the node's subnet file
// yet (it does once the node has a pod CIDR).
var ErrNoSubnetFile = errors.New("cni: subnet file not written yet")

// Subnet is what the agent's subnet file (flannel's field names) says about
// the node.
type Subnet struct {
	// V4 is the node's IPv4 pod CIDR; Gateway4 the bridge address in it
	// (FLANNEL_SUBNET's address, normally the first address); invalid on
	// an IPv6-only node.
	V4       netip.Prefix
	Gateway4 netip.Addr
	// V6/Gateway6 come from FLANNEL_IPV6_SUBNET; invalid when absent.
	V6       netip.Prefix
	Gateway6 netip.Addr
	MTU      int
	// BPFFSDir is where the agent pinned its datapath (WEFT_BPFFS_DIR):
	// the pod check is linked from there. "" when the agent predates it.
	BPFFSDir string
	// GSOIPv4MaxSize and GSOIPv6MaxSize are BIG TCP's GSO/GRO sizes for
	// both ends of a pod's veth (WEFT_GSO_IPV4_MAX_SIZE,
	// WEFT_GSO_IPV6_MAX_SIZE); 0 leaves the kernel's 64 KiB.
	GSOIPv4MaxSize, GSOIPv6MaxSize int
}

// ReadSubnetFile reads and parses the agent's subnet file. A missing file
// returns an error wrapping ErrNoSubnetFile.
func ReadSubnetFile(path string) (Subnet, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Subnet{}, fmt.Errorf("read %s: %w", path, ErrNoSubnetFile)
	}
	if err != nil {
		return Subnet{}, fmt.Errorf("read subnet file: %w", err)
	}
	s, err := ParseSubnet(data)
	if err != nil {
		return Subnet{}, fmt.Errorf("parse %s: %w", path, err)
	}
	return s, nil
}

// ParseSubnet parses subnet.env content (KEY=VALUE lines, # comments,
// each key once). FLANNEL_MTU and FLANNEL_SUBNET or FLANNEL_IPV6_SUBNET
// (or both) are required; errors name the field.
func ParseSubnet(data []byte) (Subnet, error) {
	env := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return Subnet{}, fmt.Errorf("line %q is not KEY=VALUE", line)
		}
		k = strings.TrimSpace(k)
		if _, dup := env[k]; dup {
			// Which one counts would be the reader's guess (the agent's
			// own reader of the file refuses it too).
			return Subnet{}, fmt.Errorf("%s: set twice", k)
		}
		env[k] = strings.Trim(strings.TrimSpace(v), `"`)
	}
	var s Subnet
	var err error
	// An IPv6-only node has FLANNEL_IPV6_SUBNET alone.
	if env["FLANNEL_SUBNET"] != "" || env["FLANNEL_IPV6_SUBNET"] == "" {
		s.V4, s.Gateway4, err = gatewayPrefix("FLANNEL_SUBNET", env["FLANNEL_SUBNET"], true)
		if err != nil {
			return Subnet{}, err
		}
	}
	mtu, ok := env["FLANNEL_MTU"]
	if !ok {
		return Subnet{}, errors.New("FLANNEL_MTU: missing")
	}
	s.MTU, err = strconv.Atoi(mtu)
	if err != nil || s.MTU < 576 || s.MTU > 65535 {
		return Subnet{}, fmt.Errorf("FLANNEL_MTU: %q is not an MTU between 576 and 65535", mtu)
	}
	if d, ok := env["WEFT_BPFFS_DIR"]; ok {
		if !filepath.IsAbs(d) {
			return Subnet{}, fmt.Errorf("WEFT_BPFFS_DIR: %q is not an absolute path", d)
		}
		s.BPFFSDir = d
	}
	for _, f := range []struct {
		key string
		to  *int
	}{{"WEFT_GSO_IPV4_MAX_SIZE", &s.GSOIPv4MaxSize}, {"WEFT_GSO_IPV6_MAX_SIZE", &s.GSOIPv6MaxSize}} {
		v, ok := env[f.key]
		if !ok {
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 1<<16 || n > maxGSOSize {
			return Subnet{}, fmt.Errorf("%s: %q is not a size between 65536 and %d", f.key, v, maxGSOSize)
		}
		*f.to = n
	}
	if v6 := env["FLANNEL_IPV6_SUBNET"]; v6 != "" {
		s.V6, s.Gateway6, err = gatewayPrefix("FLANNEL_IPV6_SUBNET", v6, false)
		if err != nil {
			return Subnet{}, err
		}
		// The kernel turns IPv6 off on a link below 1280: the pod's
		// address would not be added, or vanish with the MTU set.
		if s.MTU < 1280 {
			return Subnet{}, fmt.Errorf("FLANNEL_MTU: %d is below 1280, the least IPv6 allows, and FLANNEL_IPV6_SUBNET is set", s.MTU)
		}
	}
	return s, nil
}

// maxGSOSize is the kernel's largest GSO size (GSO_MAX_SIZE, 512 KiB).
const maxGSOSize = 512 << 10

// gatewayPrefix parses "10.244.1.1/24" into (10.244.1.0/24, 10.244.1.1);
// a bare network address means its first address is the gateway. The
// prefix must be a pod CIDR as weft hands them out (validate.Config's
// node masks): room for the gateway and a pod (IPv4 /30, IPv6 /126 at
// most), and no special range (unspecified, as 0.0.0.0/0 is, loopback,
// multicast, link-local), since weft0 routes it; the gateway must be an
// address of it other than its network address and, for IPv4, its
// broadcast address.
func gatewayPrefix(field, s string, v4 bool) (netip.Prefix, netip.Addr, error) {
	if s == "" {
		return netip.Prefix{}, netip.Addr{}, fmt.Errorf("%s: missing", field)
	}
	p, err := netip.ParsePrefix(s)
	if err != nil || p.Addr().Is4() != v4 || p.Addr().Is4In6() {
		fam := "IPv6"
		if v4 {
			fam = "IPv4"
		}
		return netip.Prefix{}, netip.Addr{}, fmt.Errorf("%s: %q is not an %s CIDR", field, s, fam)
	}
	if max := p.Addr().BitLen() - 2; p.Bits() > max {
		return netip.Prefix{}, netip.Addr{}, fmt.Errorf("%s: %s is longer than /%d: no room for a gateway and a pod", field, s, max)
	}
	cidr := p.Masked()
	if a := cidr.Addr(); a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() || a.IsLinkLocalUnicast() {
		return netip.Prefix{}, netip.Addr{}, fmt.Errorf("%s: %s cannot be a pod CIDR", field, cidr)
	}
	gw := p.Addr()
	if gw == cidr.Addr() {
		gw = gw.Next()
	}
	if v4 && gw == lastAddr(cidr) {
		return netip.Prefix{}, netip.Addr{}, fmt.Errorf("%s: gateway %s is the broadcast address of %s", field, gw, cidr)
	}
	return cidr, gw, nil
}

// lastAddr is the last address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(a)*8; i++ {
		a[i/8] |= 0x80 >> (i % 8)
	}
	out, _ := netip.AddrFromSlice(a)
	return out
}
