package nodeagent

import (
	"fmt"
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
// pod check is pinned.
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
	return b.String()
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
