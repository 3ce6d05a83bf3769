# Sourced by the image scripts: picks a docker CLI that talks to the running daemon and can
# build with BuildKit (the trainer Dockerfile needs it: only BuildKit skips the stages a flavour
# does not use, and only BuildKit has RUN --mount).
#
#   - a CLI with the buildx plugin, any version; or
#   - a CLI older than 23.0 (Debian bookworm's docker.io 20.10): those have BuildKit built in.
# A CLI >= 23 without buildx (e.g. a static docker binary on its own) refuses
# DOCKER_BUILDKIT=1 ("BuildKit is enabled but the buildx component is missing"), so it is
# skipped. Override with DOCKER=/path/to/docker.
#
# Sets DOCKER; defines docker_cli_pick. Needs `die`.

docker_cli_pick() {
  if [[ -n "${DOCKER:-}" ]]; then
    "$DOCKER" version >/dev/null 2>&1 || die "DOCKER=$DOCKER cannot reach a docker daemon"
    return 0
  fi
  local candidate real seen="" major reachable=""
  while IFS= read -r candidate; do
    real="$(readlink -f "$candidate")"
    case " $seen " in *" $real "*) continue ;; esac
    seen="$seen $real"
    "$candidate" version >/dev/null 2>&1 || continue
    reachable="$candidate"
    if "$candidate" buildx version >/dev/null 2>&1; then DOCKER="$candidate"; return 0; fi
    major="$("$candidate" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1)"
    if [[ "$major" =~ ^[0-9]+$ ]] && (( major < 23 )); then DOCKER="$candidate"; return 0; fi
  done < <(type -ap docker)
  if [[ -n "$reachable" ]]; then
    die "no docker CLI here can build with BuildKit ($reachable has no buildx plugin); install Debian's docker.io CLI or the buildx plugin, or set DOCKER="
  fi
  die "no docker CLI reaches a running docker daemon (is dockerd started? try: docker info)"
}
