package importrules

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
)

// kernelLibs are the import path prefixes only kernel-facing packages use.
var kernelLibs = []string{
	"github.com/vishvananda/netlink",
	"github.com/vishvananda/netns",
	"github.com/cilium/ebpf",
	"github.com/google/nftables",
}

const module = "github.com/weftnet/weft"

// kernelFacing are the packages (with everything below them) allowed to
// import kernelLibs.
var kernelFacing = []string{module + "/bpf", module + "/nodeagent/cni", module + "/testenv"}

// plainData are packages below kernelFacing that must not import them.
var plainData = []string{module + "/bpf/spec"}

// plugin is the CNI plugin binary's code; pluginUsers may import it.
var (
	plugin      = module + "/nodeagent/cni"
	pluginUsers = []string{plugin, module + "/cmd/weft-cni", module + "/testenv", module + "/deploy"}
)

func under(path string, roots []string) bool {
	for _, r := range roots {
		if path == r || strings.HasPrefix(path, r+"/") {
			return true
		}
	}
	return false
}

type pkg struct {
	ImportPath   string
	Imports      []string
	TestImports  []string
	XTestImports []string
}

// packages lists every package of the module with its imports (go list
// runs once per test binary).
func packages(t *testing.T) []pkg {
	t.Helper()
	listed, listErr := list()
	if listErr != nil {
		t.Fatal(listErr)
	}
	if len(listed) < 10 {
		t.Fatalf("go list found %d packages of %s: is the test run inside the module?", len(listed), module)
	}
	return listed
}

var list = sync.OnceValues(func() ([]pkg, error) {
	cmd := exec.Command("go", "list", "-json=ImportPath,Imports,TestImports,XTestImports", module+"/...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list: %w\n%s", err, stderr.String())
	}
	var pkgs []pkg
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			return nil, fmt.Errorf("decode go list: %w", err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs, nil
})

// violations returns "package imports library" for every import that
// breaks the rule.
func violations(pkgs []pkg) []string {
	var out []string
	for _, p := range pkgs {
		allowed := under(p.ImportPath, kernelFacing) && !under(p.ImportPath, plainData)
		if allowed {
			continue
		}
		seen := map[string]bool{}
		for _, imp := range append(append(append([]string{}, p.Imports...), p.TestImports...), p.XTestImports...) {
			if under(imp, kernelLibs) && !seen[imp] {
				seen[imp] = true
				out = append(out, p.ImportPath+" imports "+imp)
			}
		}
	}
	return out
}

// pluginViolations returns "package imports plugin" for every package
// outside pluginUsers that imports the CNI plugin's code.
func pluginViolations(pkgs []pkg) []string {
	var out []string
	for _, p := range pkgs {
		if under(p.ImportPath, pluginUsers) {
			continue
		}
		for _, imp := range append(append(append([]string{}, p.Imports...), p.TestImports...), p.XTestImports...) {
			if under(imp, []string{plugin}) {
				out = append(out, p.ImportPath+" imports "+imp)
				break
			}
		}
	}
	return out
}

func TestPluginIsItsOwnBinary(t *testing.T) {
	for _, v := range pluginViolations(packages(t)) {
		t.Errorf("%s: nodeagent/cni is the weft-cni binary's code; only cmd/weft-cni, testenv and deploy import it", v)
	}
	got := pluginViolations([]pkg{
		{ImportPath: module + "/nodeagent", Imports: []string{plugin}},
		{ImportPath: module + "/cmd/weft-cni", Imports: []string{plugin}},
		{ImportPath: module + "/cmd/weft-agent", TestImports: []string{plugin + "/sub"}},
	})
	if want := []string{module + "/nodeagent imports " + plugin, module + "/cmd/weft-agent imports " + plugin + "/sub"}; !slices.Equal(got, want) {
		t.Errorf("made-up violations %q, want %q", got, want)
	}
}

func TestKernelLibrariesOnlyInKernelFacingPackages(t *testing.T) {
	for _, v := range violations(packages(t)) {
		t.Errorf("%s: only bpf/..., nodeagent/cni/... and testenv/... may (and not bpf/spec); see internal/importrules", v)
	}
}

// TestRuleCatches checks the rule itself on made-up packages, so a typo in
// a list cannot make it pass everything.
func TestRuleCatches(t *testing.T) {
	got := violations([]pkg{
		{ImportPath: module + "/nodeagent", Imports: []string{"github.com/vishvananda/netlink"}},
		{ImportPath: module + "/nodeagent/kerneltest", TestImports: []string{"github.com/cilium/ebpf/link"}},
		{ImportPath: module + "/bpf/spec", Imports: []string{"github.com/google/nftables"}},
		{ImportPath: module + "/cmd/weftctl", XTestImports: []string{"github.com/vishvananda/netns"}},
		{ImportPath: module + "/bpf/internal/tc", Imports: []string{"github.com/cilium/ebpf"}},
		{ImportPath: module + "/nodeagent/cni", Imports: []string{"github.com/vishvananda/netlink"}},
		{ImportPath: module + "/testenv/netnstest", Imports: []string{"github.com/vishvananda/netlink"}},
		{ImportPath: module + "/bpfextra", Imports: []string{"github.com/cilium/ebpf"}},
	})
	want := []string{
		module + "/nodeagent imports github.com/vishvananda/netlink",
		module + "/nodeagent/kerneltest imports github.com/cilium/ebpf/link",
		module + "/bpf/spec imports github.com/google/nftables",
		module + "/cmd/weftctl imports github.com/vishvananda/netns",
		module + "/bpfextra imports github.com/cilium/ebpf",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("violations:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
