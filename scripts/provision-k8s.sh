#!/usr/bin/env bash
# Provision etcd, kube-apiserver and kube-controller-manager for the local control plane, and
# kubelet, kube-scheduler and kube-proxy for the dev-only real node.
#
# Builds Kubernetes 1.20.2 from Debian bookworm's source package (the only Kubernetes server
# source our package registries carry) and caches the binaries outside the clone, so later
# runs start in seconds. Prints the directory holding the binaries (KUBEBUILDER_ASSETS layout)
# as its last line.
#
# Skipped entirely when KUBEBUILDER_ASSETS already points at envtest binaries.
set -euo pipefail

K8S_SRC_VERSION="1.20.5+really1.20.2-1.1+deb12u1"
CACHE_ROOT="${SFT_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sft-operator}"
ASSETS="$CACHE_ROOT/k8s-1.20.2/bin"
# kubelet, kube-scheduler and kube-proxy for the dev-only real node (devtools.node): built
# in the same run, from the same source, into their own directory.
NODE_ASSETS="$CACHE_ROOT/k8s-1.20.2-node/bin"

die() { echo "provision-k8s: $*" >&2; exit 1; }
log() { echo "provision-k8s: $*" >&2; }

if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
  for b in etcd kube-apiserver kube-controller-manager; do
    [[ -x "$KUBEBUILDER_ASSETS/$b" ]] || die "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS has no executable '$b'; unset it to let this script build the binaries"
  done
  echo "$KUBEBUILDER_ASSETS"; exit 0
fi

cp_cached() { [[ -x "$ASSETS/kube-apiserver" && -x "$ASSETS/kube-controller-manager" && -x "$ASSETS/etcd" ]]; }
node_cached() { [[ -x "$NODE_ASSETS/kubelet" && -x "$NODE_ASSETS/kube-scheduler" && -x "$NODE_ASSETS/kube-proxy" ]]; }
cached() { cp_cached && node_cached; }
if cached; then echo "$ASSETS"; exit 0; fi

# One build at a time (make test and make cluster-up may race on a fresh machine); whoever
# waited finds the cache filled.
mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.provision.lock"
if ! flock -n 9; then
  log "another provisioning run holds $CACHE_ROOT/.provision.lock; waiting for it"
  flock 9
fi
if cached; then echo "$ASSETS"; exit 0; fi

command -v apt-get >/dev/null || die "no apt-get: install etcd, kube-apiserver and kube-controller-manager (v1.20+) yourself and set KUBEBUILDER_ASSETS to their directory"
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || die "must run as root or have sudo to install build tools with apt-get"
  SUDO="sudo"
fi

# apt-get source needs a deb-src entry for the same Debian archive the machine already uses.
SRC_LIST=/etc/apt/sources.list.d/sft-operator-src.sources
if [[ ! -f $SRC_LIST ]]; then
  [[ -f /etc/apt/sources.list.d/debian.sources ]] || die "no /etc/apt/sources.list.d/debian.sources to derive a deb-src entry from; add one for bookworm"
  log "adding a deb-src entry derived from debian.sources"
  sed -n 's/^Types: deb$/Types: deb-src/; /^#/d; p' /etc/apt/sources.list.d/debian.sources | $SUDO tee $SRC_LIST >/dev/null
fi
log "installing build tools (golang-go, rsync, etcd-server, reflect2 1.0.2)"
$SUDO apt-get update -qq >&2 || die "apt-get update failed"
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
  golang-go rsync etcd-server golang-github-modern-go-reflect2-dev dpkg-dev make >&2 \
  || die "apt-get install of the build tools failed"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sft-k8s-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
log "fetching Debian source kubernetes=$K8S_SRC_VERSION"
apt-get source -qq "kubernetes=$K8S_SRC_VERSION" >&2 || die "apt-get source kubernetes=$K8S_SRC_VERSION failed (is the deb-src entry in $SRC_LIST reachable?)"
SRC=$(find "$WORK" -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
[[ -n "$SRC" ]] || die "source tree not found after apt-get source"

# Go 1.19 breaks the vendored reflect2 v1.0.1 (SIGSEGV on the first custom-resource create);
# Debian's 1.0.2 fixes it.
REFLECT2=/usr/share/gocode/src/github.com/modern-go/reflect2
[[ -f $REFLECT2/reflect2.go ]] || die "$REFLECT2 missing after installing golang-github-modern-go-reflect2-dev; a build without it crashes on custom resources"
rm -rf "$SRC/vendor/github.com/modern-go/reflect2"
cp -r "$REFLECT2" "$SRC/vendor/github.com/modern-go/reflect2"
rm -f "$SRC/vendor/github.com/modern-go/reflect2/go.mod"

# GOPATH mode, as the package's debian/rules does it.
mkdir -p "$WORK/gopath/src/k8s.io"
ln -s "$SRC" "$WORK/gopath/src/k8s.io/kubernetes"
TARGETS=()
cp_cached || TARGETS+=(cmd/kube-apiserver cmd/kube-controller-manager)
node_cached || TARGETS+=(cmd/kubelet cmd/kube-scheduler cmd/kube-proxy)
log "building ${TARGETS[*]} (10 to 15 minutes on 2 cores, once)"
(
  cd "$WORK/gopath/src/k8s.io/kubernetes"
  export GOPATH="$WORK/gopath" GO111MODULE=off GOFLAGS= GOCACHE="$WORK/gocache" \
         KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean
  make WHAT="${TARGETS[*]}" >&2
) || die "building Kubernetes failed (see the output above)"

install_bins() {  # install_bins DIR BINARY... : the built binaries, checked, into DIR
  local dir=$1; shift
  local b out
  mkdir -p "$dir.tmp"
  for b in "$@"; do
    if [[ $b == etcd ]]; then cp "$(command -v etcd || echo /usr/bin/etcd)" "$dir.tmp/etcd"; continue; fi
    out=$(find "$SRC/_output" -type f -name "$b" -path '*bin*' | head -n1)
    [[ -n "$out" ]] || die "$b binary not found after the build"
    cp "$out" "$dir.tmp/"
  done
  for b in "$@"; do
    "$dir.tmp/$b" --version >/dev/null 2>&1 || die "the built $b does not run ($dir.tmp/$b --version failed)"
  done
  rm -rf "$dir"; mv "$dir.tmp" "$dir"
  log "binaries cached in $dir"
}
cp_cached || install_bins "$ASSETS" etcd kube-apiserver kube-controller-manager
node_cached || install_bins "$NODE_ASSETS" kubelet kube-scheduler kube-proxy
echo "$ASSETS"
