// Package deploy holds weft's installation files: Kubernetes manifests
// (kubernetes/), the CNI conflist (10-weft.conflist), the container build
// file (Containerfile) and systemd units with their environment file
// (systemd/). It has no Go code; its test decodes every manifest strictly
// into its Kubernetes type and checks that the files agree with each other
// and with the binaries' flags.
package deploy
