#!/usr/bin/env bash
# Builds the real Kubernetes components the Kubernetes test cluster runs
# (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
# kube-proxy and kubectl from k8s.io/kubernetes, and runc with seccomp)
# into a cache directory outside the repository, keyed by the Kubernetes
# version and a hash of this module (go.mod, go.sum and this script, so a
# set built by an older script, e.g. one without kube-proxy, is never
# taken for this one's). A second run with the same inputs finds the stamp
# and does nothing.
#
# Usage: build.sh [CACHE_ROOT]     (default /var/cache/weft-kube)
# Prints the directory holding the binaries as its last line.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="${1:-${WEFT_KUBE_CACHE:-/var/cache/weft-kube}}"

kube_version=v1.37.2
runc_version=v1.5.3

key=$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" | sha256sum | cut -c1-12)
out="$root/$kube_version-$key"
stamp="$out/.complete"

if [ -f "$stamp" ]; then
	echo "kubernetes binaries cached in $out" >&2
	echo "$out"
	exit 0
fi

mkdir -p "$out"
tmp="$out/.partial"
rm -rf "$tmp"
mkdir -p "$tmp"

# The Go build cache is kept next to the binaries' cache so that a change
# of this module (a new key) rebuilds only what changed.
export GOCACHE="${WEFT_KUBE_GOCACHE:-$root/gocache}"
export GOFLAGS=-mod=mod
export CGO_ENABLED=0

ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$kube_version"
ldflags="$ldflags -X k8s.io/component-base/version.gitMajor=1"
ldflags="$ldflags -X k8s.io/component-base/version.gitMinor=37"
ldflags="$ldflags -X k8s.io/component-base/version.gitTreeState=clean"
ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$kube_version"

start=$SECONDS
# One go build for all of them: they share most packages, and one build
# compiles each package once.
cmds=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
echo "building ${cmds[*]} $kube_version" >&2
(cd "$here" && go build -trimpath -ldflags "$ldflags" -o "$tmp/" "${cmds[@]/#/k8s.io/kubernetes/cmd/}")

# runc from the module proxy: Debian's runc 1.1.5 cannot start containers on
# this kernel ("can't get final child's PID from pipe"). seccomp needs cgo
# and libseccomp-dev.
echo "building runc $runc_version" >&2
CGO_ENABLED=1 GOBIN="$tmp" go install -trimpath -tags seccomp \
	-ldflags "-X main.version=${runc_version#v}" \
	"github.com/opencontainers/runc@$runc_version"

for f in "$tmp"/*; do mv "$f" "$out/"; done
rmdir "$tmp"
echo "built in $((SECONDS - start))s" >&2
touch "$stamp"
echo "$out"
