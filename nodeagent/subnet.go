package nodeagent

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/weftnet/weft/nodeagent/model"
)

// PinDirer is implemented by a Datapath with a bpffs pin directory
// (*bpf.Datapath): weft-cni finds the pod check there, so the agent names
// it in the subnet file (WEFT_BPFFS_DIR).
type PinDirer interface {
	PinDir() string
}

// subnetEnv renders the node's lease in flannel's subnet.env field names,
// so tools that read flannel's file (and weft's CNI plugin) work
// unchanged. FLANNEL_SUBNET is the gateway address (the first address of
// the pod CIDR) with the pod CIDR's mask, as flannel writes it.
// WEFT_BPFFS_DIR (when pinDir is set) tells weft-cni where the agent's
// pod check is pinned. WEFT_GSO_IPV4_MAX_SIZE and WEFT_GSO_IPV6_MAX_SIZE
// (BIG TCP, when on and usable) are the GSO/GRO sizes weft-cni gives both
// ends of a new pod's veth; the agent writes the file after the Sync that
// raised the underlay to them.
func subnetEnv(plan model.Plan, backend, clusterV4, clusterV6 string, masq bool, pinDir string) string {
	v4, v6 := localPrefixes(plan.Desired)
	var b strings.Builder
	if v4.IsValid() {
		fmt.Fprintf(&b, "FLANNEL_NETWORK=%s\n", clusterV4)
		fmt.Fprintf(&b, "FLANNEL_SUBNET=%s/%d\n", v4.Addr().Next(), v4.Bits())
	}
	if v6.IsValid() && clusterV6 != "" {
		fmt.Fprintf(&b, "FLANNEL_IPV6_NETWORK=%s\n", clusterV6)
		fmt.Fprintf(&b, "FLANNEL_IPV6_SUBNET=%s/%d\n", v6.Addr().Next(), v6.Bits())
	}
	fmt.Fprintf(&b, "FLANNEL_MTU=%d\n", plan.PodMTU)
	fmt.Fprintf(&b, "FLANNEL_IPMASQ=%t\n", masq)
	fmt.Fprintf(&b, "WEFT_BACKEND=%s\n", backend)
	if pinDir != "" {
		fmt.Fprintf(&b, "WEFT_BPFFS_DIR=%s\n", pinDir)
	}
	if d := plan.Desired; d != nil && d.BigTCP.IPv4 > 0 {
		fmt.Fprintf(&b, "WEFT_GSO_IPV4_MAX_SIZE=%d\n", d.BigTCP.IPv4)
	}
	if d := plan.Desired; d != nil && d.BigTCP.IPv6 > 0 {
		fmt.Fprintf(&b, "WEFT_GSO_IPV6_MAX_SIZE=%d\n", d.BigTCP.IPv6)
	}
	return b.String()
}

// maxSubnetFileBytes bounds what previousCIDRs reads: the file the agent
// writes is a few hundred bytes.
const maxSubnetFileBytes = 64 << 10

// previousCIDRs reads the pod CIDRs an earlier agent on this node wrote
// to the subnet file at path (FLANNEL_SUBNET and FLANNEL_IPV6_SUBNET, each
// a gateway address with the CIDR's mask), so the agent can ask for them
// again (Registration.previous_pod_cidrs). No file is no CIDRs and no
// error; a field that does not parse is an error naming it, and the file
// counts as holding nothing.
func previousCIDRs(path string) ([]netip.Prefix, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read subnet file: %w", err)
	}
	defer f.Close()
	buf, err := io.ReadAll(io.LimitReader(f, maxSubnetFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read subnet file %s: %w", path, err)
	}
	if len(buf) > maxSubnetFileBytes {
		return nil, fmt.Errorf("read subnet file %s: more than %d bytes", path, maxSubnetFileBytes)
	}
	var out []netip.Prefix
	seen := map[string]bool{}
	for line := range strings.Lines(string(buf)) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok || (k != "FLANNEL_SUBNET" && k != "FLANNEL_IPV6_SUBNET") {
			continue
		}
		if seen[k] {
			return nil, fmt.Errorf("read subnet file %s: %s: set twice", path, k)
		}
		seen[k] = true
		family := "IPv6"
		if k == "FLANNEL_SUBNET" {
			family = "IPv4"
		}
		p, err := netip.ParsePrefix(v)
		if err != nil || p.Addr().Is4() != (family == "IPv4") {
			return nil, fmt.Errorf("read subnet file %s: %s: %q is not an %s address with a mask", path, k, v, family)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// writeSubnetEnv writes the subnet file when its content changed, through
// a temporary file in the same directory and a rename, so a reader sees
// the old file or the new one, never half of one.
func (l *loop) writeSubnetEnv(plan model.Plan) error {
	if l.a.cfg.SubnetFile == "" {
		return nil
	}
	cfg := l.state.Config()
	var pinDir string
	if p, ok := l.a.dp.(PinDirer); ok {
		pinDir = p.PinDir()
	}
	content := subnetEnv(plan, cfg.Backend, cfg.ClusterCidr, cfg.ClusterCidrV6, cfg.Masquerade, pinDir)
	if content == l.subnetEnv {
		return nil
	}
	if err := writeAtomic(l.a.cfg.SubnetFile, []byte(content)); err != nil {
		return err
	}
	l.subnetEnv = content
	l.a.log.Info("wrote subnet file", "path", l.a.cfg.SubnetFile)
	return nil
}

func writeAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("create temp file in %s: %w", dir, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return fmt.Errorf("chmod %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s to %s: %w", tmp, path, err)
	}
	return nil
}
