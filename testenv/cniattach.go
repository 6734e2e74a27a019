package testenv

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

// CNIAttacher attaches pods by running the weft-cni plugin through libcni,
// the way a container runtime does, so every test that uses it exercises
// the plugin. The plugin runs inside the node's namespace (it creates
// weft0 there); its address store and libcni's cache live beside the
// node's subnet file, so nodes of one cluster never share them.
type CNIAttacher struct {
	binDir string
}

var _ PodAttacher = (*CNIAttacher)(nil)

// NewCNIAttacher returns an attacher running the weft-cni binary found in
// binDir (see BuildCNIPlugin).
func NewCNIAttacher(binDir string) *CNIAttacher { return &CNIAttacher{binDir: binDir} }

// BuildCNIPlugin compiles weft-cni into dir (run from inside the module).
func BuildCNIPlugin(ctx context.Context, dir string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(dir, "weft-cni"), "github.com/weftnet/weft/cmd/weft-cni")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build weft-cni: %w\n%s", err, out)
	}
	return nil
}

func (a *CNIAttacher) setup(subnetFile string) (*libcni.CNIConfig, *libcni.NetworkConfigList, error) {
	dir := filepath.Dir(subnetFile)
	conf := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"weft","plugins":[{"type":"weft-cni","subnetFile":%q,"dataDir":%q}]}`,
		subnetFile, filepath.Join(dir, "cni-data"))
	list, err := libcni.ConfListFromBytes([]byte(conf))
	if err != nil {
		return nil, nil, fmt.Errorf("parse conflist: %w", err)
	}
	return libcni.NewCNIConfigWithCacheDir([]string{a.binDir}, filepath.Join(dir, "cni-cache"), &invoke.DefaultExec{
		// explicit: libcni creates its default lazily, racing between
		// concurrent calls on one CNIConfig
		RawExec:       &invoke.RawExec{Stderr: os.Stderr},
		PluginDecoder: version.PluginDecoder{},
	}), list, nil
}

// cniNSPath accepts a netns name (under /run/netns) or a path.
func cniNSPath(ns string) string {
	if strings.Contains(ns, "/") {
		return ns
	}
	return nsPath(ns)
}

func cniNSName(ns string) string {
	if strings.Contains(ns, "/") {
		return filepath.Base(ns)
	}
	return ns
}

// Attach runs CNI ADD for podName (the container ID) with eth0 in podNS
// and returns the pod's addresses, IPv4 first.
func (a *CNIAttacher) Attach(ctx context.Context, nodeNS, podNS, podName, subnetFile string) ([]netip.Addr, error) {
	cni, list, err := a.setup(subnetFile)
	if err != nil {
		return nil, err
	}
	rt := &libcni.RuntimeConf{ContainerID: podName, NetNS: cniNSPath(podNS), IfName: "eth0"}
	var res *current.Result
	// exec from a thread inside the node netns: the plugin inherits it.
	err = InNS(cniNSName(nodeNS), func() error {
		r, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			return err
		}
		res, err = current.NewResultFromResult(r)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("cni add %s: %w", podName, err)
	}
	var out []netip.Addr
	for _, ipc := range res.IPs {
		if ip, ok := netip.AddrFromSlice(ipc.Address.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("cni add %s: result has no address", podName)
	}
	slices.SortStableFunc(out, func(x, y netip.Addr) int { return x.BitLen() - y.BitLen() })
	return out, nil
}

// Detach runs CNI DEL for podName; detaching what is not attached, or
// from a node whose netns is gone, is not an error.
func (a *CNIAttacher) Detach(ctx context.Context, nodeNS, podNS, podName, subnetFile string) error {
	if _, err := os.Stat(cniNSPath(nodeNS)); os.IsNotExist(err) {
		return nil // the node is gone, and its links with it
	}
	cni, list, err := a.setup(subnetFile)
	if err != nil {
		return err
	}
	rt := &libcni.RuntimeConf{ContainerID: podName, NetNS: cniNSPath(podNS), IfName: "eth0"}
	if _, err := os.Stat(rt.NetNS); os.IsNotExist(err) {
		rt.NetNS = ""
	}
	err = InNS(cniNSName(nodeNS), func() error { return cni.DelNetworkList(ctx, list, rt) })
	if err != nil {
		return fmt.Errorf("cni del %s: %w", podName, err)
	}
	return nil
}
