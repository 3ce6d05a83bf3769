#!/usr/bin/env bash
# Build the images the local cluster, the demo and the image tests run, from the project's own
# Dockerfiles with build args only:
#   1. the local Python base image (scripts/build-base-image.sh; built once, cached);
#   2. the operator image, root Dockerfile, PYTHON_IMAGE=<local base>;
#   3. the trainer image, trainer-image/Dockerfile, in the flavour SFT_TRAINER_FLAVOR names
#      (`make images FLAVOR=...`):
#      cpu (the default here; the tests, the demo): FLAVOR=cpu, CPU_PYTHON_IMAGE=<local base>,
#        from a staged build context: the sources, constraints.txt and the local CPU torch
#        wheel (wheels/);
#      cuda (production's flavour; 6.3 GB, cold ≈3-5 min here): FLAVOR=cuda,
#        CUDA_PYTHON_IMAGE=<local base>, the repository root as context like a production
#        build (trainer-image/Dockerfile.dockerignore; wheels in trainer-image/wheelhouse/ are
#        installed), the CUDA torch and everything else from the package index.
# Docker's build cache makes a rebuild of unchanged sources take seconds.
#
# Progress and timings on stderr; build logs under $SFT_IMAGES_LOG_DIR (default .local/images/).
# The image names go to stdout as the last lines and to .local/images.env, as shell assignments:
#   SFT_BASE_IMAGE=sft-local/python:3.11-bookworm
#   SFT_OPERATOR_IMAGE=sft-operator:dev
#   SFT_TRAINER_IMAGE=sft-trainer:cpu-dev
#   SFT_TRAINER_CUDA_IMAGE=sft-trainer:cuda-dev     (once the cuda flavour was built)
#
# Environment: SFT_OPERATOR_IMAGE, SFT_TRAINER_IMAGE, SFT_TRAINER_CUDA_IMAGE, SFT_BASE_IMAGE
# (names), SFT_TRAINER_FLAVOR=cpu|cuda (default cpu), SFT_TORCH_WHEEL (the cpu flavour's torch
# wheel; default: torch-<version>+cpu-cp311-*.whl from pip's find-links directories or
# /opt/wheels), SFT_IMAGES_ONLY=operator|trainer, DOCKER (the CLI).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OPERATOR_IMAGE="${SFT_OPERATOR_IMAGE:-sft-operator:dev}"
TRAINER_IMAGE="${SFT_TRAINER_IMAGE:-sft-trainer:cpu-dev}"
TRAINER_CUDA_IMAGE="${SFT_TRAINER_CUDA_IMAGE:-sft-trainer:cuda-dev}"
FLAVOR="${SFT_TRAINER_FLAVOR:-cpu}"
ONLY="${SFT_IMAGES_ONLY:-}"
STATE="$ROOT/.local"
LOG_DIR="${SFT_IMAGES_LOG_DIR:-$STATE/images}"
CONTEXT="$STATE/images/trainer-context"   # a stable path: BuildKit resends only what changed

log() { echo "build-images: $*" >&2; }
die() { echo "build-images: $*" >&2; exit 1; }
# shellcheck source=scripts/docker-cli.sh
. "$ROOT/scripts/docker-cli.sh"
docker_cli_pick
export DOCKER
[[ "$FLAVOR" == cpu || "$FLAVOR" == cuda ]] || die "SFT_TRAINER_FLAVOR must be cpu or cuda, got '$FLAVOR'"
mkdir -p "$LOG_DIR" "$STATE/images"
# One run per checkout at a time: runs share the staged context and the logs.
exec 8>"$STATE/images/.build.lock"
if ! flock -n 8; then
  log "another build-images.sh run holds $STATE/images/.build.lock; waiting for it"
  flock 8
fi

size() { "$DOCKER" image inspect --format '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1 / 1e6}'; }

# build NAME LOG ARGS...: a BuildKit build, its log in LOG; the tail of the log on failure.
build() {
  local name="$1" logfile="$2"; shift 2
  local start=$SECONDS
  if ! DOCKER_BUILDKIT=1 "$DOCKER" build --progress=plain --network host "$@" >"$logfile" 2>&1; then
    # Seen once with dockerd 20.10's BuildKit under load: a COPY --from's cache key failed on
    # an lstat in the source stage; the same build passed right after. Retry that error once.
    if grep -q 'failed to compute cache key: failed to walk' "$logfile"; then
      log "BuildKit could not checksum a COPY (see $logfile.1); retrying once"
      mv "$logfile" "$logfile.1"
      DOCKER_BUILDKIT=1 "$DOCKER" build --progress=plain --network host "$@" >"$logfile" 2>&1 \
        || { tail -n 40 "$logfile" >&2; die "building $name failed (whole log: $logfile)"; }
    else
      tail -n 40 "$logfile" >&2
      die "building $name failed (whole log: $logfile)"
    fi
  fi
  local cached steps
  cached="$(grep -c '^#[0-9]* CACHED' "$logfile" || true)"
  steps="$(grep -cE '^#[0-9]+ \[' "$logfile" || true)"
  log "built $name in $((SECONDS - start)) s ($(size "$name"); $cached of $steps steps cached; log: $logfile)"
}

total=$SECONDS
start=$SECONDS
BASE_IMAGE="$("$ROOT/scripts/build-base-image.sh" | tail -n 1)"
log "base image $BASE_IMAGE ready in $((SECONDS - start)) s"

if [[ -z "$ONLY" || "$ONLY" == operator ]]; then
  log "building $OPERATOR_IMAGE (Dockerfile, PYTHON_IMAGE=$BASE_IMAGE; cold ≈3 min; any source change reinstalls its dependencies)"
  build "$OPERATOR_IMAGE" "$LOG_DIR/operator.log" \
    --build-arg "PYTHON_IMAGE=$BASE_IMAGE" -t "$OPERATOR_IMAGE" "$ROOT"
fi

if [[ ( -z "$ONLY" || "$ONLY" == trainer ) && "$FLAVOR" == cuda ]]; then
  wheels="$(cd "$ROOT/trainer-image/wheelhouse" && ls -- *.whl 2>/dev/null | tr '\n' ' ' || true)"
  log "building $TRAINER_CUDA_IMAGE (trainer-image/Dockerfile, FLAVOR=cuda, CUDA_PYTHON_IMAGE=$BASE_IMAGE, wheelhouse: ${wheels:-none}; 6.3 GB, cold ≈3-5 min, ≈3 GB downloaded)"
  build "$TRAINER_CUDA_IMAGE" "$LOG_DIR/trainer-cuda.log" \
    -f "$ROOT/trainer-image/Dockerfile" \
    --build-arg FLAVOR=cuda --build-arg "CUDA_PYTHON_IMAGE=$BASE_IMAGE" \
    -t "$TRAINER_CUDA_IMAGE" "$ROOT"
fi

if [[ ( -z "$ONLY" || "$ONLY" == trainer ) && "$FLAVOR" == cpu ]]; then
  torch_version="$(sed -n 's/^ARG TORCH_VERSION=//p' "$ROOT/trainer-image/Dockerfile" | head -n 1)"
  [[ -n "$torch_version" ]] || die "no ARG TORCH_VERSION in trainer-image/Dockerfile"
  wheel="${SFT_TORCH_WHEEL:-}"
  if [[ -z "$wheel" ]]; then
    dirs="$(pip config get global.find-links 2>/dev/null || true) ${PIP_FIND_LINKS:-} /opt/wheels"
    for dir in $dirs; do
      dir="${dir#file://}"
      for candidate in "$dir"/torch-"$torch_version"+cpu-cp311-cp311-*linux*_x86_64.whl; do
        if [[ -f "$candidate" ]]; then wheel="$candidate"; break 2; fi
      done
    done
  fi
  [[ -n "$wheel" && -f "$wheel" ]] \
    || die "no CPU torch $torch_version wheel for CPython 3.11 found (pip's find-links, /opt/wheels); set SFT_TORCH_WHEEL=/path/to/torch-$torch_version+cpu-cp311-...whl"

  # The staged context: what trainer-image/Dockerfile copies, constraints.txt, the wheel.
  rm -rf "$CONTEXT"
  mkdir -p "$CONTEXT/trainer-image" "$CONTEXT/wheels"
  cp -p "$ROOT/constraints.txt" "$CONTEXT/"
  cp -pR "$ROOT/core" "$CONTEXT/core"
  cp -pR "$ROOT/trainer-image/sft_trainer" "$ROOT/trainer-image/pyproject.toml" "$ROOT/trainer-image/Dockerfile" \
    "$CONTEXT/trainer-image/"
  ln "$wheel" "$CONTEXT/wheels/" 2>/dev/null || cp -p "$wheel" "$CONTEXT/wheels/"
  printf '%s\n' '**/__pycache__' '**/*.pyc' '**/*.egg-info' >"$CONTEXT/.dockerignore"

  log "building $TRAINER_IMAGE (trainer-image/Dockerfile, FLAVOR=cpu, CPU_PYTHON_IMAGE=$BASE_IMAGE, $(basename "$wheel"); cold ≈12 min, a source change ≈1 min)"
  build "$TRAINER_IMAGE" "$LOG_DIR/trainer.log" \
    -f "$CONTEXT/trainer-image/Dockerfile" \
    --build-arg FLAVOR=cpu --build-arg "CPU_PYTHON_IMAGE=$BASE_IMAGE" \
    -t "$TRAINER_IMAGE" "$CONTEXT"
fi

log "done in $((SECONDS - total)) s"
# Every image name that exists (SFT_IMAGES_ONLY builds one, the other may be there from before).
{
  echo "SFT_BASE_IMAGE=$BASE_IMAGE"
  ! "$DOCKER" image inspect "$OPERATOR_IMAGE" >/dev/null 2>&1 || echo "SFT_OPERATOR_IMAGE=$OPERATOR_IMAGE"
  ! "$DOCKER" image inspect "$TRAINER_IMAGE" >/dev/null 2>&1 || echo "SFT_TRAINER_IMAGE=$TRAINER_IMAGE"
  ! "$DOCKER" image inspect "$TRAINER_CUDA_IMAGE" >/dev/null 2>&1 || echo "SFT_TRAINER_CUDA_IMAGE=$TRAINER_CUDA_IMAGE"
} | tee "$STATE/images.env"
