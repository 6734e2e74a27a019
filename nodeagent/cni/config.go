package cni

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
)

// Defaults of the weft-specific netconf fields.
const (
	DefaultSubnetFile = "/run/weft/subnet.env"
	DefaultDataDir    = "/var/lib/cni/weft"
	// BridgeName is the node's pod bridge holding the gateway address
	// (the first address of the node's pod CIDR).
	BridgeName = "weft0"
)

// NetConf is the plugin's network configuration. Besides the standard
// fields it knows subnetFile (the agent's subnet.env) and dataDir (the
// address store).
type NetConf struct {
	types.PluginConf
	SubnetFile string `json:"subnetFile,omitempty"`
	DataDir    string `json:"dataDir,omitempty"`
}

// knownFields are the top-level netconf keys the plugin accepts. Any other
// key is refused so a typo ("subnetfile") is reported instead of silently
// falling back to a default. Keys starting with "cni.dev/" are injected by
// runtimes and always accepted.
var knownFields = map[string]bool{
	"cniVersion": true, "name": true, "type": true, "capabilities": true,
	"ipam": true, "dns": true, "prevResult": true, "runtimeConfig": true,
	"args": true, "subnetFile": true, "dataDir": true,
}

// configError is a CNI "invalid network config" (code 7) error naming field.
func configError(field, format string, args ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig,
		fmt.Sprintf("invalid network config: %s: %s", field, fmt.Sprintf(format, args...)), "")
}

// ParseConfig decodes and checks a netconf, filling in defaults. Errors are
// *types.Error with code 7 (invalid network config) or 6 (decoding
// failure) and name the offending field.
func ParseConfig(data []byte) (*NetConf, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("decode network config: %v", err), "")
	}
	var unknown []string
	for k := range raw {
		if !knownFields[k] && !strings.HasPrefix(k, "cni.dev/") {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, configError(unknown[0], "unknown field (weft-cni knows cniVersion, name, type, subnetFile, dataDir and the standard CNI fields)")
	}
	conf := &NetConf{}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(conf); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return nil, configError(te.Field, "wrong type: got JSON %s, want %s", te.Value, te.Type)
		}
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("decode network config: %v", err), "")
	}
	if conf.Name == "" {
		return nil, configError("name", "missing")
	}
	if conf.CNIVersion == "" {
		return nil, configError("cniVersion", "missing")
	}
	if conf.IPAM.Type != "" {
		return nil, configError("ipam", "weft-cni allocates pod addresses itself from the node's pod CIDR; remove the ipam section (got type %q)", conf.IPAM.Type)
	}
	if conf.SubnetFile == "" {
		if _, set := raw["subnetFile"]; set {
			return nil, configError("subnetFile", "empty; omit it for the default %s", DefaultSubnetFile)
		}
		conf.SubnetFile = DefaultSubnetFile
	}
	if !filepath.IsAbs(conf.SubnetFile) {
		return nil, configError("subnetFile", "%q is not an absolute path", conf.SubnetFile)
	}
	if conf.DataDir == "" {
		if _, set := raw["dataDir"]; set {
			return nil, configError("dataDir", "empty; omit it for the default %s", DefaultDataDir)
		}
		conf.DataDir = DefaultDataDir
	}
	if !filepath.IsAbs(conf.DataDir) {
		return nil, configError("dataDir", "%q is not an absolute path", conf.DataDir)
	}
	return conf, nil
}
