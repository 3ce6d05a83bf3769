#!/usr/bin/env bash
# Docker for the image tier and the local real node: Debian's docker.io (dockerd 20.10, whose
# BuildKit needs no plugin and which kubelet 1.20's dockershim speaks to), the CNI plugins and
# mmdebstrap (local base images: no image registry is reachable here). Starts dockerd when none
# answers, with the project's runc wrapper as its default runtime (scripts/runc-clamp-oom: this
# sandbox cannot lower a process's oom_score_adj, which dockershim asks for on every pod).
# Idempotent; a later run finds everything in place in a second.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
STATE="${SFT_DOCKER_STATE:-${XDG_CACHE_HOME:-$HOME/.cache}/sft-operator/dockerd}"
TIMEOUT=60
log() { echo "provision-docker: $*" >&2; }
die() { log "$*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (dockerd and the real node need it)"
need=()
[[ -x /usr/sbin/dockerd && -x /usr/bin/docker ]] || need+=(docker.io)
[[ -x /usr/lib/cni/bridge ]] || need+=(containernetworking-plugins)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v iptables >/dev/null || need+=(iptables)
if (( ${#need[@]} )); then
  log "installing ${need[*]}"
  apt-get update -qq >&2 || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2 \
    || die "apt-get install ${need[*]} failed"
fi

if /usr/bin/docker info >/dev/null 2>&1; then
  /usr/bin/docker info --format '{{json .Runtimes}}' | grep -q sft-runc \
    || log "note: the running dockerd has no sft-runc runtime; pods of the real node may fail to start (restart dockerd without this script's flags removed)"
  exit 0
fi
mkdir -p "$STATE"
log "starting dockerd (log: $STATE/dockerd.log)"
setsid /usr/sbin/dockerd --storage-driver=overlay2 \
  --add-runtime=sft-runc="$HERE/runc-clamp-oom" --default-runtime=sft-runc \
  >"$STATE/dockerd.log" 2>&1 < /dev/null &
for _ in $(seq 1 $((TIMEOUT * 2))); do
  /usr/bin/docker info >/dev/null 2>&1 && { log "dockerd is up"; exit 0; }
  sleep 0.5
done
tail -n 20 "$STATE/dockerd.log" >&2 || true
die "dockerd did not answer within ${TIMEOUT}s (log: $STATE/dockerd.log)"
