package deploy_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/weftnet/weft/nodeagent/cni"
	"github.com/weftnet/weft/proto/validate"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

const (
	namespace = "weft-system"
	image     = "ghcr.io/weftnet/weft:v0.1.0"
)

// objects is every manifest document, decoded strictly, by kind and name.
type objects struct {
	namespaces  map[string]*corev1.Namespace
	sas         map[string]*corev1.ServiceAccount
	configMaps  map[string]*corev1.ConfigMap
	secrets     map[string]*corev1.Secret
	roles       map[string]*rbacv1.ClusterRole
	bindings    map[string]*rbacv1.ClusterRoleBinding
	daemonSets  map[string]*appsv1.DaemonSet
	deployments map[string]*appsv1.Deployment
}

// kinds are the kinds a manifest may have: one for each map of objects.
var kinds = map[reflect.Type]bool{
	reflect.TypeFor[*corev1.Namespace](): true, reflect.TypeFor[*corev1.ServiceAccount](): true,
	reflect.TypeFor[*corev1.ConfigMap](): true, reflect.TypeFor[*corev1.Secret](): true,
	reflect.TypeFor[*rbacv1.ClusterRole](): true, reflect.TypeFor[*rbacv1.ClusterRoleBinding](): true,
	reflect.TypeFor[*appsv1.DaemonSet](): true, reflect.TypeFor[*appsv1.Deployment](): true,
}

func newObjects(all []runtime.Object) *objects {
	return &objects{
		namespaces: of[*corev1.Namespace](all), sas: of[*corev1.ServiceAccount](all),
		configMaps: of[*corev1.ConfigMap](all), secrets: of[*corev1.Secret](all),
		roles: of[*rbacv1.ClusterRole](all), bindings: of[*rbacv1.ClusterRoleBinding](all),
		daemonSets: of[*appsv1.DaemonSet](all), deployments: of[*appsv1.Deployment](all),
	}
}

// of returns the objects of type T in all by name.
func of[T interface {
	runtime.Object
	GetName() string
}](all []runtime.Object) map[string]T {
	out := map[string]T{}
	for _, obj := range all {
		if x, ok := obj.(T); ok {
			out[x.GetName()] = x
		}
	}
	return out
}

// strict decodes every built-in kind (client-go's scheme) from YAML or
// JSON and refuses unknown and duplicate fields.
var strict = serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()

// decode reads one document strictly into the typed object its apiVersion
// and kind name, which must be one objects files, and returns it with
// "Kind/name".
func decode(doc []byte) (runtime.Object, string, error) {
	obj, gvk, err := strict.Decode(doc, nil, nil)
	if err != nil {
		id := ""
		if gvk != nil {
			id = gvk.Kind
		}
		return nil, id, err
	}
	m, err := apimeta.Accessor(obj)
	if err != nil {
		return nil, gvk.Kind, err
	}
	id := gvk.Kind + "/" + m.GetName()
	if !kinds[reflect.TypeOf(obj)] {
		return nil, id, fmt.Errorf("unexpected kind %s", gvk)
	}
	if m.GetName() == "" {
		return nil, id, fmt.Errorf("%s without metadata.name", gvk.Kind)
	}
	return obj, id, nil
}

var docSep = regexp.MustCompile(`(?m)^---\s*$`)

func load(t *testing.T) *objects {
	t.Helper()
	files, _ := filepath.Glob("kubernetes/*.yaml")
	if len(files) == 0 {
		t.Fatal("no manifests in kubernetes/")
	}
	var all []runtime.Object
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range docSep.Split(string(data), -1) {
			if strings.TrimSpace(stripComments(doc)) == "" {
				continue
			}
			obj, id, err := decode([]byte(doc))
			if err != nil {
				t.Errorf("%s document %d (%s): %v", f, i, id, err)
				continue
			}
			all = append(all, obj)
		}
	}
	return newObjects(all)
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

func TestStrictDecoderRefusesUnknownFields(t *testing.T) {
	// The check below is only worth something if the decoder is strict.
	for _, bad := range []string{
		"apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: x\n  namespce: weft-system\n",
		"apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: x\nspec:\n  template:\n    spec:\n      hostNetwork: true\n      hostNetwork: false\n",
		"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  a: 1\n  b: [1]\n",
	} {
		if _, _, err := decode([]byte(bad)); err == nil {
			t.Errorf("strict decoding accepted:\n%s", bad)
		}
	}
}

func TestManifests(t *testing.T) {
	o := load(t)
	if t.Failed() {
		return
	}
	if _, ok := o.namespaces[namespace]; !ok {
		t.Errorf("no Namespace %s", namespace)
	}
	namespaced := func(kind, name, ns string) {
		if ns != namespace {
			t.Errorf("%s %s is in namespace %q, want %s", kind, name, ns, namespace)
		}
	}
	for n, x := range o.sas {
		namespaced("ServiceAccount", n, x.Namespace)
	}
	for n, x := range o.configMaps {
		namespaced("ConfigMap", n, x.Namespace)
	}
	for n, x := range o.secrets {
		namespaced("Secret", n, x.Namespace)
	}
	for n, x := range o.daemonSets {
		namespaced("DaemonSet", n, x.Namespace)
		checkPod(t, o, "DaemonSet "+n, x.Spec.Selector, x.Spec.Template)
	}
	for n, x := range o.deployments {
		namespaced("Deployment", n, x.Namespace)
		checkPod(t, o, "Deployment "+n, x.Spec.Selector, x.Spec.Template)
	}

	// RBAC: bindings point at roles and service accounts that exist.
	for n, b := range o.bindings {
		if b.RoleRef.Kind != "ClusterRole" || o.roles[b.RoleRef.Name] == nil {
			t.Errorf("ClusterRoleBinding %s refers to missing %s %s", n, b.RoleRef.Kind, b.RoleRef.Name)
		}
		for _, s := range b.Subjects {
			if s.Kind != "ServiceAccount" || o.sas[s.Name] == nil || s.Namespace != namespace {
				t.Errorf("ClusterRoleBinding %s: subject %s %s/%s does not exist", n, s.Kind, s.Namespace, s.Name)
			}
		}
	}

	// Least rights: the controller may get/list/watch nodes and nothing
	// else; the agent has no binding and no token.
	ctl := o.deployments["weft-controller"]
	agent := o.daemonSets["weft-agent"]
	if ctl == nil || agent == nil {
		t.Fatal("missing the weft-controller Deployment or the weft-agent DaemonSet")
	}
	rights := map[string][]string{}
	for _, b := range o.bindings {
		for _, s := range b.Subjects {
			for _, r := range o.roles[b.RoleRef.Name].Rules {
				for _, res := range r.Resources {
					for _, g := range r.APIGroups {
						rights[s.Name] = append(rights[s.Name], fmt.Sprintf("%s/%s:%s", g, res, strings.Join(r.Verbs, ",")))
					}
				}
			}
		}
	}
	if got := rights[ctl.Spec.Template.Spec.ServiceAccountName]; !slices.Equal(got, []string{"/nodes:get,list,watch"}) {
		t.Errorf("controller rights %v, want exactly get,list,watch on nodes", got)
	}
	if got := rights[agent.Spec.Template.Spec.ServiceAccountName]; len(got) > 0 {
		t.Errorf("agent has API rights %v, want none", got)
	}
	if sa := o.sas[agent.Spec.Template.Spec.ServiceAccountName]; sa == nil || sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
		t.Error("agent ServiceAccount must not mount a token")
	}

	if ctl.Spec.Replicas == nil || *ctl.Spec.Replicas != 2 {
		t.Errorf("controller replicas %v, want 2", ctl.Spec.Replicas)
	}
	as := agent.Spec.Template.Spec
	if !as.HostNetwork {
		t.Error("agent must use the host network")
	}
	c := container(t, as.Containers, "agent")
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil || (sc.Privileged != nil && *sc.Privileged) {
		t.Fatal("agent container needs explicit capabilities and must not be privileged")
	}
	var added []string
	for _, cp := range sc.Capabilities.Add {
		added = append(added, string(cp))
	}
	sort.Strings(added)
	// NET_BIND_SERVICE: weft-bgp, the agent's child in bgp mode, listens
	// on port 179 (TestKubernetesNative's bgp subtest failed with "bind:
	// permission denied" without it).
	if !slices.Equal(added, agentCapabilities) || !slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Errorf("agent capabilities add %v drop %v, want add %v, drop ALL", added, sc.Capabilities.Drop, agentCapabilities)
	}
	// Host paths the agent and its installer need.
	paths := map[string]bool{}
	for _, v := range as.Volumes {
		if v.HostPath != nil {
			paths[v.HostPath.Path] = true
		}
	}
	for _, p := range []string{"/sys/fs/bpf", "/run/weft", "/etc/cni/net.d", "/opt/cni/bin"} {
		if !paths[p] {
			t.Errorf("agent DaemonSet does not mount host path %s", p)
		}
	}
	// The agent's subnet file is on the host path the plugin reads.
	subnetFile := flagValue(c, "subnet-file", "/run/weft/subnet.env")
	wc := weftConf(t)
	if wc.SubnetFile != subnetFile || !mountedAt(c, as.Volumes, filepath.Dir(subnetFile), filepath.Dir(wc.SubnetFile)) {
		t.Errorf("agent writes %s, plugin reads %s from the host; they must be the same host file", subnetFile, wc.SubnetFile)
	}
	// The conflist the installer copies equals deploy/10-weft.conflist.
	var cm *corev1.ConfigMap
	for _, v := range as.Volumes {
		if v.ConfigMap != nil {
			cm = o.configMaps[v.ConfigMap.Name]
		}
	}
	raw, _ := os.ReadFile("10-weft.conflist")
	if cm == nil || !jsonEqual(cm.Data["10-weft.conflist"], string(raw)) {
		t.Error("the ConfigMap's 10-weft.conflist differs from deploy/10-weft.conflist")
	}
	// The controller's initial ClusterConfig decodes (proto names, no
	// unknown fields) and validates.
	cfg := &weftv1.ClusterConfig{}
	if err := protojson.Unmarshal([]byte(o.configMaps["weft-config"].Data["cluster-config.json"]), cfg); err != nil {
		t.Errorf("cluster-config.json: %v", err)
	} else if err := validate.Config(validate.WithDefaults(cfg)); err != nil {
		t.Errorf("cluster-config.json: %v", err)
	}
}

// TestProbes: the kubelet restarts a weft daemon only when its /livez
// fails (the agent's converge loop is stuck), and takes it out of Ready
// while its /healthz fails (degraded: etcd or peers unreachable). With
// liveness on /healthz the kubelet restarted agents whose etcd or peers
// were away for a minute, which a restart cannot bring back.
func TestProbes(t *testing.T) {
	o := load(t)
	if t.Failed() {
		return
	}
	agent, ctl := o.daemonSets["weft-agent"], o.deployments["weft-controller"]
	if agent == nil || ctl == nil {
		t.Fatal("missing the weft-agent DaemonSet or the weft-controller Deployment")
	}
	for what, c := range map[string]*corev1.Container{
		"DaemonSet weft-agent":       container(t, agent.Spec.Template.Spec.Containers, "agent"),
		"Deployment weft-controller": container(t, ctl.Spec.Template.Spec.Containers, "controller"),
	} {
		for _, p := range []struct {
			kind, path string
			probe      *corev1.Probe
		}{{"liveness", "/livez", c.LivenessProbe}, {"readiness", "/healthz", c.ReadinessProbe}} {
			switch {
			case p.probe == nil || p.probe.HTTPGet == nil:
				t.Errorf("%s: no HTTP %s probe, want one on %s", what, p.kind, p.path)
			case p.probe.HTTPGet.Path != p.path:
				t.Errorf("%s: %s probe on %s, want %s", what, p.kind, p.probe.HTTPGet.Path, p.path)
			}
		}
	}
}

// TestRolloutWithinAntiAffinity: a Deployment whose replicas may not share
// a node (required podAntiAffinity on kubernetes.io/hostname against its
// own pods) rolls out without a surge pod (maxSurge 0) and replaces one
// replica at a time (maxUnavailable at least 1). With the default
// (maxSurge 25%, rounded up: one pod) the surge pod of weft-controller
// finds no node on a cluster with as many nodes as replicas, and every
// rollout stalls for ever (TestKubernetes, "controller rollout").
func TestRolloutWithinAntiAffinity(t *testing.T) {
	o := load(t)
	if t.Failed() {
		return
	}
	if o.deployments["weft-controller"] == nil {
		t.Fatal("no Deployment weft-controller")
	}
	for name, d := range o.deployments {
		if !ownHostAntiAffinity(d) {
			continue
		}
		replicas := 1
		if d.Spec.Replicas != nil {
			replicas = int(*d.Spec.Replicas)
		}
		ru := d.Spec.Strategy.RollingUpdate
		if d.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType || ru == nil || ru.MaxSurge == nil || ru.MaxUnavailable == nil {
			t.Errorf("Deployment %s: strategy %+v, want RollingUpdate with maxSurge 0 and maxUnavailable 1 set", name, d.Spec.Strategy)
			continue
		}
		surge, err := intstr.GetScaledValueFromIntOrPercent(ru.MaxSurge, replicas, true)
		if err != nil || surge != 0 {
			t.Errorf("Deployment %s: maxSurge %s is %d pods of %d (%v), want 0: one replica per node leaves no node for a surge pod", name, ru.MaxSurge.String(), surge, replicas, err)
		}
		unavailable, err := intstr.GetScaledValueFromIntOrPercent(ru.MaxUnavailable, replicas, false)
		if err != nil || unavailable < 1 {
			t.Errorf("Deployment %s: maxUnavailable %s is %d pods of %d (%v), want at least 1 with maxSurge 0", name, ru.MaxUnavailable.String(), unavailable, replicas, err)
		}
	}
	if !ownHostAntiAffinity(o.deployments["weft-controller"]) {
		t.Error("Deployment weft-controller: no required anti-affinity per host against its own pods (its replicas must not share a node)")
	}
}

// ownHostAntiAffinity says whether d's pods are required not to share a
// node with one another.
func ownHostAntiAffinity(d *appsv1.Deployment) bool {
	a := d.Spec.Template.Spec.Affinity
	if a == nil || a.PodAntiAffinity == nil {
		return false
	}
	for _, term := range a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution {
		sel, err := metav1.LabelSelectorAsSelector(term.LabelSelector)
		if err == nil && term.TopologyKey == corev1.LabelHostname && !sel.Empty() && sel.Matches(labels.Set(d.Spec.Template.Labels)) {
			return true
		}
	}
	return false
}

// TestConfigMapBigTCP: the ConfigMap's cluster config shows big_tcp and
// big_tcp_v6 with their defaults, and the comment above it names, as
// refused, exactly the backends validate refuses each of them with.
func TestConfigMapBigTCP(t *testing.T) {
	o := load(t)
	cm := o.configMaps["weft-config"]
	if cm == nil {
		t.Fatal("no ConfigMap weft-config")
	}
	raw := cm.Data["cluster-config.json"]
	shown := map[string]any{}
	cfg := &weftv1.ClusterConfig{}
	if err := json.Unmarshal([]byte(raw), &shown); err != nil {
		t.Fatalf("cluster-config.json: %v", err)
	}
	if err := protojson.Unmarshal([]byte(raw), cfg); err != nil {
		t.Fatalf("cluster-config.json: %v", err)
	}
	comment := configComment(t)
	m := regexp.MustCompile(`refused with ([^.:]*)`).FindStringSubmatch(comment)
	if m == nil {
		t.Fatalf("the comment above cluster-config.json says nothing \"refused with\": %q", comment)
	}
	for _, f := range []struct {
		name string
		set  func(*weftv1.ClusterConfig)
	}{
		{"big_tcp", func(c *weftv1.ClusterConfig) { c.BigTcp = true }},
		{"big_tcp_v6", func(c *weftv1.ClusterConfig) { c.ClusterCidrV6, c.BigTcpV6 = "fd00:10:244::/56", true }},
	} {
		fd := cfg.ProtoReflect().Descriptor().Fields().ByName(protoreflect.Name(f.name))
		if fd == nil {
			t.Fatalf("ClusterConfig has no field %s", f.name)
		}
		unset := proto.Clone(cfg).(*weftv1.ClusterConfig)
		unset.ProtoReflect().Clear(fd)
		def := validate.WithDefaults(unset).ProtoReflect().Get(fd).Interface()
		if v, ok := shown[f.name]; !ok {
			t.Errorf("cluster-config.json does not show %s", f.name)
		} else if v != def {
			t.Errorf("cluster-config.json shows %s: %v, its default is %v", f.name, v, def)
		}
		if !regexp.MustCompile(`\b` + f.name + `\b`).MatchString(comment) {
			t.Errorf("the comment above cluster-config.json does not name %s", f.name)
		}
		for _, b := range validate.Backends {
			c := proto.Clone(cfg).(*weftv1.ClusterConfig)
			c.Backend, c.BigTcp, c.BigTcpV6 = b, false, false
			if b == "bgp" {
				c.Bgp = &weftv1.BGPConfig{Asn: 64512, FullMesh: true}
			}
			f.set(c)
			off := proto.Clone(c).(*weftv1.ClusterConfig)
			off.ProtoReflect().Clear(fd)
			if err := validate.Config(validate.WithDefaults(off)); err != nil {
				t.Fatalf("backend %s without %s: %v", b, f.name, err)
			}
			err := validate.Config(validate.WithDefaults(c))
			refused := errors.Is(err, validate.ErrInvalid) && strings.Contains(err.Error(), f.name+":")
			named := regexp.MustCompile(`\b` + b + `\b`).MatchString(m[1])
			if refused != named {
				t.Errorf("%s with backend %s: refused %v (%v), but the comment's %q names it %v", f.name, b, refused, err, m[0], named)
			}
		}
	}
}

// configComment returns the comment lines right above cluster-config.json
// in configmap.yaml, joined by spaces.
func configComment(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("kubernetes/configmap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	for i, l := range lines {
		if strings.TrimSpace(l) != "cluster-config.json: |" {
			continue
		}
		var c []string
		for j := i - 1; j >= 0 && strings.HasPrefix(strings.TrimSpace(lines[j]), "#"); j-- {
			c = append([]string{strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(lines[j]), "#"))}, c...)
		}
		return strings.Join(c, " ")
	}
	t.Fatal("configmap.yaml has no cluster-config.json key")
	return ""
}

func jsonEqual(a, b string) bool {
	var x, y any
	if json.Unmarshal([]byte(a), &x) != nil || json.Unmarshal([]byte(b), &y) != nil {
		return false
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return bytes.Equal(xa, ya)
}

func container(t *testing.T, cs []corev1.Container, name string) *corev1.Container {
	t.Helper()
	for i := range cs {
		if cs[i].Name == name {
			return &cs[i]
		}
	}
	t.Fatalf("no container %s", name)
	return nil
}

// flagValue is the value c gives flag (argument or WEFT_ env), else def.
func flagValue(c *corev1.Container, flag, def string) string {
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--"+flag+"="); ok {
			return v
		}
	}
	for _, e := range c.Env {
		if e.Name == envName(flag) && e.ValueFrom == nil {
			return e.Value
		}
	}
	return def
}

func envName(flag string) string {
	return "WEFT_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// mountedAt reports whether the container's mountPath is a hostPath
// volume of hostPath.
func mountedAt(c *corev1.Container, vols []corev1.Volume, mountPath, hostPath string) bool {
	for _, m := range c.VolumeMounts {
		if m.MountPath != mountPath {
			continue
		}
		for _, v := range vols {
			if v.Name == m.Name && v.HostPath != nil && v.HostPath.Path == hostPath {
				return true
			}
		}
	}
	return false
}

// checkPod checks one pod template: labels match the selector, the
// ServiceAccount exists, every mount has a volume and every volume is
// mounted, ConfigMap/Secret names and keys exist, images are weft's, and
// commands are binaries the Containerfile installs with flags they have.
func checkPod(t *testing.T, o *objects, what string, sel *metav1.LabelSelector, tpl corev1.PodTemplateSpec) {
	for k, v := range sel.MatchLabels {
		if tpl.Labels[k] != v {
			t.Errorf("%s: selector %s=%s does not match the template labels %v", what, k, v, tpl.Labels)
		}
	}
	ps := tpl.Spec
	if o.sas[ps.ServiceAccountName] == nil {
		t.Errorf("%s: ServiceAccount %q does not exist", what, ps.ServiceAccountName)
	}
	vols := map[string]corev1.Volume{}
	for _, v := range ps.Volumes {
		vols[v.Name] = v
		if v.ConfigMap != nil {
			checkKeys(t, what, "ConfigMap", v.ConfigMap.Name, v.ConfigMap.Items, o.cmKeys(v.ConfigMap.Name))
		}
		if v.Secret != nil {
			checkKeys(t, what, "Secret", v.Secret.SecretName, v.Secret.Items, o.secretKeys(v.Secret.SecretName))
		}
	}
	used := map[string]bool{}
	installed := containerfileBinaries(t)
	all := append(slices.Clone(ps.InitContainers), ps.Containers...)
	for _, c := range all {
		if c.Image != image {
			t.Errorf("%s/%s: image %q, want %s", what, c.Name, c.Image, image)
		}
		for _, m := range c.VolumeMounts {
			used[m.Name] = true
			if _, ok := vols[m.Name]; !ok {
				t.Errorf("%s/%s: volumeMount %s has no volume", what, c.Name, m.Name)
			}
		}
		for _, e := range c.Env {
			if e.ValueFrom == nil {
				continue
			}
			if r := e.ValueFrom.ConfigMapKeyRef; r != nil && !o.cmKeys(r.Name)[r.Key] {
				t.Errorf("%s/%s: env %s refers to missing ConfigMap key %s/%s", what, c.Name, e.Name, r.Name, r.Key)
			}
			if r := e.ValueFrom.SecretKeyRef; r != nil && !o.secretKeys(r.Name)[r.Key] {
				t.Errorf("%s/%s: env %s refers to missing Secret key %s/%s", what, c.Name, e.Name, r.Name, r.Key)
			}
		}
		if len(c.Command) == 0 {
			t.Errorf("%s/%s: no command", what, c.Name)
			continue
		}
		if c.Command[0] == "/bin/sh" {
			// Installer scripts: every weft binary path they copy exists.
			for _, p := range regexp.MustCompile(`/usr/local/bin/[\w-]+`).FindAllString(strings.Join(c.Command, " "), -1) {
				if !installed[p] {
					t.Errorf("%s/%s: script uses %s, which the Containerfile does not install", what, c.Name, p)
				}
			}
			continue
		}
		if !installed[c.Command[0]] {
			t.Errorf("%s/%s: command %s is not installed by the Containerfile", what, c.Name, c.Command[0])
			continue
		}
		checkFlags(t, what+"/"+c.Name, filepath.Base(c.Command[0]), c)
		// A binary named in an argument (weft-agent's --bgp-speaker) is
		// in the image too.
		for _, arg := range c.Args {
			if _, v, _ := strings.Cut(arg, "="); strings.HasPrefix(v, "/usr/local/bin/") && !installed[v] {
				t.Errorf("%s/%s: argument %s names a binary the Containerfile does not install", what, c.Name, arg)
			}
		}
		// Probes hit the metrics address the container listens on.
		for kind, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
			if p == nil || p.HTTPGet == nil {
				continue
			}
			addr := flagValue(&c, "metrics-addr", "")
			want := fmt.Sprintf("%s:%d", p.HTTPGet.Host, p.HTTPGet.Port.IntValue())
			if addr != want {
				t.Errorf("%s/%s: %s probe %s, but metrics listen on %q", what, c.Name, kind, want, addr)
			}
		}
	}
	for n := range vols {
		if !used[n] {
			t.Errorf("%s: volume %s is never mounted", what, n)
		}
	}
}

func checkKeys(t *testing.T, what, kind, name string, items []corev1.KeyToPath, keys map[string]bool) {
	if keys == nil {
		t.Errorf("%s: %s %s does not exist", what, kind, name)
		return
	}
	for _, it := range items {
		if !keys[it.Key] {
			t.Errorf("%s: %s %s has no key %s", what, kind, name, it.Key)
		}
	}
}

func (o *objects) cmKeys(name string) map[string]bool {
	cm := o.configMaps[name]
	if cm == nil {
		return nil
	}
	k := map[string]bool{}
	for key := range cm.Data {
		k[key] = true
	}
	return k
}

func (o *objects) secretKeys(name string) map[string]bool {
	s := o.secrets[name]
	if s == nil {
		return nil
	}
	k := map[string]bool{}
	for key := range s.StringData {
		k[key] = true
	}
	for key := range s.Data {
		k[key] = true
	}
	return k
}

// pendingFlags are agreed flags the binaries do not have yet (their wiring
// belongs to another part). The manifests set them through the
// environment, which a binary without the flag ignores; once the flag
// lands this list must shrink, and the test says so.
var pendingFlags = map[string][]string{}

// binaryFlags extracts the flag names a binary defines from its source
// (fs.StringVar(&x, "name", ...) and friends).
func binaryFlags(t *testing.T, binary string) map[string]bool {
	t.Helper()
	files := map[string][]string{
		"weft-controller": {"../controlplane/daemon/daemon.go"},
		"weft-agent":      {"../nodeagent/daemon/daemon.go"},
	}[binary]
	if files == nil {
		t.Fatalf("no flag source known for %s", binary)
	}
	flags := map[string]bool{}
	for _, f := range files {
		file, err := parser.ParseFile(token.NewFileSet(), f, nil, 0)
		if err != nil {
			t.Fatalf("parse %s: %v", f, err)
		}
		ast.Inspect(file, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || !regexp.MustCompile(`^(String|Int|Int64|Uint|Uint64|Bool|Duration|Float64|Func|Text)(Var)?$`).MatchString(sel.Sel.Name) {
				return true
			}
			for _, a := range call.Args[:min(2, len(call.Args))] {
				if lit, ok := a.(*ast.BasicLit); ok && lit.Kind == token.STRING {
					name, _ := strconv.Unquote(lit.Value)
					flags[name] = true
					break
				}
			}
			return true
		})
	}
	if len(flags) < 5 {
		t.Fatalf("found only %v in %s: flag extraction is broken", flags, files)
	}
	return flags
}

func checkFlags(t *testing.T, what, binary string, c corev1.Container) {
	have := binaryFlags(t, binary)
	pending := map[string]bool{}
	for _, p := range pendingFlags[binary] {
		if have[p] {
			t.Errorf("%s now has --%s: remove it from pendingFlags", binary, p)
		}
		pending[p] = true
	}
	for _, a := range c.Args {
		name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !strings.HasPrefix(a, "--") || !have[name] {
			t.Errorf("%s: argument %q is not a flag of %s", what, a, binary)
		}
	}
	envs := map[string]string{}
	for f := range have {
		envs[envName(f)] = f
	}
	for _, e := range c.Env {
		if _, ok := envs[e.Name]; !ok {
			name := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(e.Name, "WEFT_"), "_", "-"))
			if pending[name] {
				t.Logf("%s: %s sets --%s, agreed but not yet in %s", what, e.Name, name, binary)
				continue
			}
			t.Errorf("%s: env %s is not a flag of %s", what, e.Name, binary)
		}
	}
}

func conflist(t *testing.T) *libcni.NetworkConfigList {
	t.Helper()
	l, err := libcni.ConfListFromFile("10-weft.conflist")
	if err != nil {
		t.Fatalf("10-weft.conflist: %v", err)
	}
	return l
}

// weftConf is what the runtime hands weft-cni from the conflist (the
// list's name and version injected), through the plugin's own parser.
func weftConf(t *testing.T) *cni.NetConf {
	t.Helper()
	l := conflist(t)
	inj, err := libcni.InjectConf(l.Plugins[0], map[string]any{"name": l.Name, "cniVersion": l.CNIVersion})
	if err != nil {
		t.Fatal(err)
	}
	c, err := cni.ParseConfig(inj.Bytes)
	if err != nil {
		t.Fatalf("weft-cni refuses its conflist entry: %v", err)
	}
	return c
}

func TestConflist(t *testing.T) {
	l := conflist(t)
	if l.Name != "weft" || len(l.Plugins) != 2 {
		t.Fatalf("conflist %s with %d plugins, want weft with weft-cni and portmap", l.Name, len(l.Plugins))
	}
	if l.Plugins[0].Network.Type != "weft-cni" || l.Plugins[1].Network.Type != "portmap" {
		t.Fatalf("plugins %s, %s; want weft-cni then portmap", l.Plugins[0].Network.Type, l.Plugins[1].Network.Type)
	}
	if !l.Plugins[1].Network.Capabilities["portMappings"] {
		t.Error("portmap without the portMappings capability")
	}
	c := weftConf(t)
	if c.SubnetFile != cni.DefaultSubnetFile || c.DataDir != cni.DefaultDataDir {
		t.Errorf("conflist paths %s %s differ from the plugin defaults", c.SubnetFile, c.DataDir)
	}
}

// DistroPortmap is where Debian's containernetworking-plugins installs
// portmap, the one a user of the conflist has.
const DistroPortmap = "/usr/lib/cni/portmap"

// TestConflistVersionSpokenByPortmap: the conflist's cniVersion must be one
// the portmap plugin users have speaks (Debian 12's is 1.1.1, which refuses
// 1.1.0: ADD then leased an address and failed, and DEL failed before
// reaching weft-cni), and one weft-cni speaks.
func TestConflistVersionSpokenByPortmap(t *testing.T) {
	l := conflist(t)
	if !slices.Contains(cni.SupportedVersions.SupportedVersions(), l.CNIVersion) {
		t.Errorf("weft-cni does not speak the conflist's cniVersion %s", l.CNIVersion)
	}
	if _, err := os.Stat(DistroPortmap); err != nil {
		t.Skipf("%s missing (apt-get install containernetworking-plugins): %v", DistroPortmap, err)
	}
	cmd := exec.Command(DistroPortmap)
	cmd.Env = []string{"CNI_COMMAND=VERSION"}
	cmd.Stdin = strings.NewReader(`{"cniVersion":"` + l.CNIVersion + `"}`)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s VERSION: %v", DistroPortmap, err)
	}
	var v struct {
		Supported []string `json:"supportedVersions"`
	}
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("%s VERSION: %v: %s", DistroPortmap, err, out)
	}
	if !slices.Contains(v.Supported, l.CNIVersion) {
		t.Errorf("conflist cniVersion %s, which %s does not speak (it speaks %v)", l.CNIVersion, DistroPortmap, v.Supported)
	}
}

// containerfileBinaries returns the paths the Containerfile installs, and
// checks each is built from a cmd/ package that exists.
func containerfileBinaries(t *testing.T) map[string]bool {
	t.Helper()
	data, err := os.ReadFile("Containerfile")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	built := map[string]bool{}
	for _, m := range regexp.MustCompile(`\./cmd/([\w-]+)`).FindAllStringSubmatch(string(data), -1) {
		if _, err := os.Stat(filepath.Join("..", "cmd", m[1])); err != nil {
			t.Errorf("Containerfile builds ./cmd/%s, which does not exist", m[1])
		}
		built[m[1]] = true
	}
	for _, m := range regexp.MustCompile(`(?m)^COPY --from=build /out/([\w-]+) (\S+)$`).FindAllStringSubmatch(string(data), -1) {
		if !built[m[1]] || filepath.Base(m[2]) != m[1] {
			t.Errorf("Containerfile copies %s to %s but does not build it under that name", m[1], m[2])
		}
		out[m[2]] = true
	}
	for _, m := range regexp.MustCompile(`(?m)^COPY (deploy/\S+) `).FindAllStringSubmatch(string(data), -1) {
		if _, err := os.Stat(filepath.Join("..", m[1])); err != nil {
			t.Errorf("Containerfile copies %s, which does not exist", m[1])
		}
	}
	if len(out) == 0 {
		t.Fatal("Containerfile installs no binaries")
	}
	return out
}

func TestContainerfile(t *testing.T) {
	got := containerfileBinaries(t)
	for _, b := range []string{"weft-controller", "weft-agent", "weft-bgp", "weftctl", "weft-cni"} {
		if !got["/usr/local/bin/"+b] {
			t.Errorf("Containerfile does not install /usr/local/bin/%s", b)
		}
	}
}

// unit is a parsed systemd unit: section → key → values.
func parseUnit(t *testing.T, path string) map[string]map[string][]string {
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := map[string]map[string][]string{}
	sec := ""
	for _, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "" || strings.HasPrefix(l, "#"):
		case strings.HasPrefix(l, "["):
			sec = strings.Trim(l, "[]")
			u[sec] = map[string][]string{}
		default:
			k, v, _ := strings.Cut(l, "=")
			u[sec][k] = append(u[sec][k], v)
		}
	}
	return u
}

// agentCapabilities are the capabilities the agent runs with, sorted, in
// the DaemonSet (without CAP_) and the systemd unit (with it).
var agentCapabilities = []string{"BPF", "NET_ADMIN", "NET_BIND_SERVICE", "NET_RAW", "PERFMON"}

func TestSystemdUnits(t *testing.T) {
	// The environment file sets only flags one of the binaries has.
	all := map[string]bool{}
	for _, b := range []string{"weft-controller", "weft-agent"} {
		for f := range binaryFlags(t, b) {
			all[envName(f)] = true
		}
	}
	env, err := os.ReadFile("systemd/weft.env")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(env), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		k, _, ok := strings.Cut(l, "=")
		if !ok || !all[k] {
			t.Errorf("weft.env: %q sets no flag of weft-controller or weft-agent", l)
		}
	}

	// systemd-analyze verify checks that ExecStart is executable, and the
	// binaries are not installed on this machine: build the real ones into
	// a temp dir and verify a copy of each unit that runs them from there,
	// changing nothing else.
	sa, saErr := exec.LookPath("systemd-analyze")
	binDir := t.TempDir()
	if saErr == nil {
		build := exec.Command("go", "build", "-o", binDir+"/", "../cmd/weft-controller", "../cmd/weft-agent", "../cmd/weft-bgp")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build the binaries the units run: %v\n%s", err, out)
		}
	}
	dir := t.TempDir()
	installed := containerfileBinaries(t)
	for _, b := range []string{"weft-controller", "weft-agent"} {
		name := b + ".service"
		u := parseUnit(t, filepath.Join("systemd", name))
		exec0 := u["Service"]["ExecStart"]
		if len(exec0) != 1 {
			t.Fatalf("%s: want one ExecStart, got %v", name, exec0)
		}
		fields := strings.Fields(exec0[0])
		if fields[0] != "/usr/local/bin/"+b {
			t.Errorf("%s runs %s, want /usr/local/bin/%s (where the Containerfile and docs install it)", name, fields[0], b)
		}
		have := binaryFlags(t, b)
		for _, a := range fields[1:] {
			f, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
			if !have[f] {
				t.Errorf("%s: %q is not a flag of %s", name, a, b)
			}
			if _, v, _ := strings.Cut(a, "="); strings.HasPrefix(v, "/usr/local/bin/") && !installed[v] {
				t.Errorf("%s: %q names a binary the Containerfile does not install", name, a)
			}
		}
		if !slices.Contains(u["Service"]["EnvironmentFile"], "/etc/weft/weft.env") {
			t.Errorf("%s does not read /etc/weft/weft.env", name)
		}
		// Environment= defaults are flags of the binary, and the etcd
		// identity is the unit's own file (one certificate per etcd user).
		env := map[string]string{}
		for _, e := range u["Service"]["Environment"] {
			k, v, _ := strings.Cut(e, "=")
			env[k] = v
			if !have[strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(k, "WEFT_"), "_", "-"))] {
				t.Errorf("%s: Environment=%s sets no flag of %s", name, e, b)
			}
		}
		if b == "weft-agent" {
			// The DaemonSet's capabilities, no more, in both sets the
			// unit names (its weft-bgp child inherits them).
			for _, key := range []string{"AmbientCapabilities", "CapabilityBoundingSet"} {
				var got []string
				for _, v := range u["Service"][key] {
					for _, cp := range strings.Fields(v) {
						got = append(got, strings.TrimPrefix(cp, "CAP_"))
					}
				}
				sort.Strings(got)
				if !slices.Equal(got, agentCapabilities) {
					t.Errorf("%s: %s %v, want the DaemonSet's %v", name, key, got, agentCapabilities)
				}
			}
		}
		own := map[string]string{"weft-agent": "/etc/weft/etcd/agent", "weft-controller": "/etc/weft/etcd/controller"}[b]
		if env["WEFT_ETCD_CERTFILE"] != own+".crt" || env["WEFT_ETCD_KEYFILE"] != own+".key" || env["WEFT_ETCD_CAFILE"] == "" {
			t.Errorf("%s: etcd identity %v, want %s.crt and .key and a CA", name, env, own)
		}
		data, _ := os.ReadFile(filepath.Join("systemd", name))
		data = bytes.ReplaceAll(data, []byte("/usr/local/bin/"), []byte(binDir+"/"))
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if saErr != nil {
		t.Skip("systemd-analyze is not installed; units checked by the parser above only")
	}
	out, err := exec.Command(sa, "verify", "--man=no", filepath.Join(dir, "weft-controller.service"), filepath.Join(dir, "weft-agent.service")).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// volumeOf returns the volume the file at path (inside container c) lives
// on and the path relative to its mount.
func volumeOf(c *corev1.Container, vols []corev1.Volume, path string) (*corev1.Volume, string) {
	for _, m := range c.VolumeMounts {
		rel, ok := strings.CutPrefix(path, strings.TrimSuffix(m.MountPath, "/")+"/")
		if !ok {
			continue
		}
		for i := range vols {
			if vols[i].Name == m.Name {
				return &vols[i], rel
			}
		}
	}
	return nil, ""
}

// TestEtcdIdentities: every agent presents its own node's etcd
// certificate from the node's disk (the files the systemd unit uses
// too), never the shared Secret; the controller presents the Secret's.
func TestEtcdIdentities(t *testing.T) {
	o := load(t)
	ds := o.daemonSets["weft-agent"]
	dep := o.deployments["weft-controller"]
	if ds == nil || dep == nil {
		t.Fatal("no weft-agent DaemonSet or weft-controller Deployment")
	}
	agent := ds.Spec.Template.Spec.Containers[0]
	for flag, want := range map[string]string{"etcd-certfile": "/etc/weft/etcd/agent.crt", "etcd-keyfile": "/etc/weft/etcd/agent.key", "etcd-cafile": "/etc/weft/etcd/ca.crt"} {
		path := flagValue(&agent, flag, "")
		v, rel := volumeOf(&agent, ds.Spec.Template.Spec.Volumes, path)
		switch {
		case v == nil:
			t.Errorf("agent --%s %q is on no volume", flag, path)
		case v.HostPath == nil:
			t.Errorf("agent --%s %q is on volume %s, not the node's disk: every node would share one etcd identity", flag, path, v.Name)
		case v.HostPath.Path+"/"+rel != want:
			t.Errorf("agent --%s is the node's %s/%s, want %s (where weft-agent.service reads it)", flag, v.HostPath.Path, rel, want)
		case v.HostPath.Type == nil || *v.HostPath.Type != corev1.HostPathDirectory:
			t.Errorf("agent etcd volume %s: type %v, want Directory (a node without its certificate must not start an agent)", v.Name, v.HostPath.Type)
		}
	}
	for _, v := range ds.Spec.Template.Spec.Volumes {
		if v.Secret != nil && v.Secret.SecretName == "weft-etcd" {
			t.Errorf("agent mounts Secret weft-etcd (volume %s): the controller's identity", v.Name)
		}
	}
	ctl := dep.Spec.Template.Spec.Containers[0]
	if v, rel := volumeOf(&ctl, dep.Spec.Template.Spec.Volumes, flagValue(&ctl, "etcd-certfile", "")); v == nil || v.Secret == nil || v.Secret.SecretName != "weft-etcd" || rel != "tls.crt" {
		t.Errorf("controller certificate on %+v %q, want Secret weft-etcd tls.crt", v, rel)
	}
}
