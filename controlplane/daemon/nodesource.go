package daemon

import (
	"fmt"

	"github.com/hashicorp/go-hclog"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/weftnet/weft/controlplane/kubesource"
	"github.com/weftnet/weft/controlplane/source"
)

// The values of --node-source.
const (
	SourceRegistrations = "registrations"
	SourceKubernetes    = "kubernetes"
)

// checkSource is Parse's usage check of the node source flags: a known
// --node-source, a selector that parses, and no Kubernetes flag given to
// the registration source (it would be silently ignored).
func (o *Options) checkSource() error {
	switch o.NodeSource {
	case SourceRegistrations:
		for _, f := range []string{"kubeconfig", "node-selector"} {
			if o.set[f] {
				return fmt.Errorf("--%s needs --node-source=%s", f, SourceKubernetes)
			}
		}
	case SourceKubernetes:
		if _, err := labels.Parse(o.NodeSelector); err != nil {
			return fmt.Errorf("--node-selector %q: %w", o.NodeSelector, err)
		}
	default:
		return fmt.Errorf("--node-source %q: want %s or %s", o.NodeSource, SourceRegistrations, SourceKubernetes)
	}
	return nil
}

// ValidateSource is the dry run of the node source: beyond Parse's
// checks it loads the --kubeconfig file when one is given. It contacts no
// API server, and without --kubeconfig it does not require running in a
// cluster.
func (o *Options) ValidateSource() error {
	if o.NodeSource != SourceKubernetes || o.Kubeconfig == "" {
		return nil
	}
	_, err := o.restConfig()
	return err
}

// Source returns the node source the controller runs: nil for
// registrations (the controller's default, which needs the etcd client),
// or a kubesource on KubeClient, else on a clientset built from
// --kubeconfig or the in-cluster config. Building it contacts no API
// server; an unreachable one shows later as a source that never syncs.
func (o *Options) Source(log hclog.Logger) (source.Source, error) {
	if o.NodeSource != SourceKubernetes {
		return nil, nil
	}
	client := o.KubeClient
	if client == nil {
		rc, err := o.restConfig()
		if err != nil {
			return nil, err
		}
		cs, err := kubernetes.NewForConfig(rc)
		if err != nil {
			return nil, fmt.Errorf("build kubernetes client: %w", err)
		}
		client = cs
	}
	opts := []kubesource.Option{kubesource.WithLogger(log)}
	if o.NodeSelector != "" {
		opts = append(opts, kubesource.WithLabelSelector(o.NodeSelector))
	}
	s, err := kubesource.New(client, opts...)
	if err != nil {
		return nil, fmt.Errorf("--node-selector: %w", err)
	}
	return s, nil
}

func (o *Options) restConfig() (*rest.Config, error) {
	var rc *rest.Config
	var err error
	if o.Kubeconfig != "" {
		if rc, err = clientcmd.BuildConfigFromFlags("", o.Kubeconfig); err != nil {
			return nil, fmt.Errorf("load --kubeconfig %s: %w", o.Kubeconfig, err)
		}
	} else if rc, err = rest.InClusterConfig(); err != nil {
		return nil, fmt.Errorf("load in-cluster kubernetes config (or set --kubeconfig): %w", err)
	}
	rc.UserAgent = "weft-controller"
	return rc, nil
}
