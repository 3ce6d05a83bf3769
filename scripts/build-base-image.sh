#!/usr/bin/env bash
# Build the local Python base image for dev builds of both images, once, and cache it.
#
# No container registry is reachable on the dev/CI machines, so the base that the Dockerfiles
# take as PYTHON_IMAGE / CPU_PYTHON_IMAGE is made here: a minimal Debian bookworm
# (mmdebstrap --variant=minbase, python3 3.11, python3-venv) imported into docker. Into it go
# what a `pip install` inside a build needs to reach the package index this machine uses:
#   - the machine's CA bundle (pip's `cert` / PIP_CERT / SSL_CERT_FILE, else Debian's bundle);
#   - the http(s) index settings of `pip config list` (index-url, extra-index-url, trusted-host,
#     timeout), written to the image's /etc/pip.conf. Local paths (file:// indexes,
#     find-links directories, constraint files) are not reachable inside a build: skipped.
#     With no index-url configured, pip's default index is used.
# apt inside the chroot uses this machine's own Debian sources when it has them.
#
# Skipped when the image exists with the same recipe hash (this script, the package list, the
# CA bundle, the pip config, the apt sources). Progress on stderr; prints the image name last.
#
#   scripts/build-base-image.sh            # SFT_BASE_IMAGE overrides the name
set -euo pipefail

IMAGE="${SFT_BASE_IMAGE:-sft-local/python:3.11-bookworm}"
SUITE=bookworm
INCLUDE=python3,python3-venv,python-is-python3,ca-certificates
LABEL_KEY=dev.sft-operator.base-recipe

log() { echo "build-base-image: $*" >&2; }
die() { echo "build-base-image: $*" >&2; exit 1; }
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/docker-cli.sh
. "$here/docker-cli.sh"
docker_cli_pick

stage="$(mktemp -d "${TMPDIR:-/tmp}/sft-base.XXXXXX")"
trap 'rm -rf "$stage"' EXIT

# The CA bundle pip on this machine trusts.
ca=""
for candidate in "$(pip config get global.cert 2>/dev/null || true)" "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" \
                 /etc/ssl/certs/ca-certificates.crt; do
  if [[ -n "$candidate" && -f "$candidate" ]]; then ca="$candidate"; break; fi
done
[[ -n "$ca" ]] || die "no CA bundle found (pip's cert, PIP_CERT, SSL_CERT_FILE, /etc/ssl/certs/ca-certificates.crt)"
cp "$ca" "$stage/ca-certificates.crt"

# pip's http(s) index settings, as this machine's pip sees them (env overrides config files).
pip_config="$( (command -v pip >/dev/null && pip config list 2>/dev/null) || (python3 -m pip config list 2>/dev/null) || true)"
python3 - "$pip_config" >"$stage/pip.conf" <<'PY'
import ast, sys
settings: dict[str, tuple[int, str]] = {}
for line in sys.argv[1].splitlines():
    name, _, value = line.partition("=")
    if not value:
        continue
    section, _, key = name.rpartition(".")
    rank = {":env:": 2, "global": 0, "install": 1}.get(section)
    if rank is None:
        continue
    try:
        value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        value = value.strip("'\"")
    if key not in settings or settings[key][0] <= rank:
        settings[key] = (rank, str(value))
out = ["[global]", "cert = /etc/ssl/certs/ca-certificates.crt"]
for key in ("index-url", "extra-index-url"):
    urls = [u for u in settings.get(key, (0, ""))[1].split() if u.startswith(("http://", "https://"))]
    if urls:
        out.append(f"{key} = {' '.join(urls)}")
for key in ("trusted-host", "default-timeout", "timeout", "retries"):
    if key in settings and settings[key][1].strip():
        out.append(f"{'timeout' if key == 'default-timeout' else key} = {settings[key][1]}")
print("\n".join(dict.fromkeys(out)))
PY

# apt sources: this machine's Debian sources if it has them, else mmdebstrap's default mirror.
sources=()
if [[ -s /etc/apt/sources.list.d/debian.sources ]] && grep -q "$SUITE" /etc/apt/sources.list.d/debian.sources; then
  grep -v '^#' /etc/apt/sources.list.d/debian.sources >"$stage/host.sources"
  sources=("$stage/host.sources")
elif [[ -s /etc/apt/sources.list ]] && grep -qE "^deb .* $SUITE " /etc/apt/sources.list; then
  grep -E "^deb .* $SUITE(-updates|-security)? " /etc/apt/sources.list >"$stage/host.list"
  sources=("$stage/host.list")
fi

recipe="$( { cat "${BASH_SOURCE[0]}" "$here/docker-cli.sh"; echo "$SUITE $INCLUDE"; cat "$stage/ca-certificates.crt" "$stage/pip.conf"; \
             [[ ${#sources[@]} -gt 0 ]] && cat "${sources[0]}"; } | sha256sum | cut -c1-16)"

existing="$("$DOCKER" image inspect --format "{{index .Config.Labels \"$LABEL_KEY\"}}" "$IMAGE" 2>/dev/null || true)"
if [[ "$existing" == "$recipe" ]]; then
  log "$IMAGE is up to date (recipe $recipe)"
  echo "$IMAGE"; exit 0
fi

# One build at a time.
lock_dir="${SFT_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sft-operator}"
mkdir -p "$lock_dir"
exec 9>"$lock_dir/.base-image.lock"
flock -n 9 || { log "another build holds $lock_dir/.base-image.lock; waiting"; flock 9; }
existing="$("$DOCKER" image inspect --format "{{index .Config.Labels \"$LABEL_KEY\"}}" "$IMAGE" 2>/dev/null || true)"
if [[ "$existing" == "$recipe" ]]; then log "$IMAGE was built meanwhile"; echo "$IMAGE"; exit 0; fi

if ! command -v mmdebstrap >/dev/null; then
  command -v apt-get >/dev/null || die "mmdebstrap is missing and there is no apt-get to install it"
  log "installing mmdebstrap (apt-get)"
  SUDO=""; [[ $EUID -eq 0 ]] || SUDO=sudo
  $SUDO apt-get install -y -o DPkg::Lock::Timeout=600 mmdebstrap >&2 \
    || { $SUDO apt-get update -o DPkg::Lock::Timeout=600 >&2 && $SUDO apt-get install -y -o DPkg::Lock::Timeout=600 mmdebstrap >&2; } \
    || die "could not install mmdebstrap"
fi

start=$SECONDS
log "mmdebstrap $SUITE ($INCLUDE) with this machine's CA bundle ($ca) and pip index settings (≈40 s)"
mmdebstrap --quiet --variant=minbase --include="$INCLUDE" \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook="cp '$stage/ca-certificates.crt' \"\$1/etc/ssl/certs/ca-certificates.crt\"" \
  --customize-hook="cp '$stage/pip.conf' \"\$1/etc/pip.conf\"" \
  "$SUITE" "$stage/rootfs.tar" "${sources[@]}" >&2 \
  || die "mmdebstrap failed"
log "rootfs: $(du -h "$stage/rootfs.tar" | cut -f1) in $((SECONDS - start)) s; docker import as $IMAGE"
"$DOCKER" import \
  --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  --change "ENV LANG=C.UTF-8" \
  --change "LABEL $LABEL_KEY=$recipe" \
  --change 'CMD ["python3"]' \
  "$stage/rootfs.tar" "$IMAGE" >/dev/null
"$DOCKER" run --rm "$IMAGE" python -c 'import ssl, venv, sys; print(sys.version.split()[0])' >/dev/null \
  || die "$IMAGE does not run python"
log "built $IMAGE (recipe $recipe) in $((SECONDS - start)) s"
echo "$IMAGE"
