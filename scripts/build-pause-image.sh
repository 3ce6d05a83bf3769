#!/usr/bin/env bash
# Dev-only: the pod sandbox ("pause") image of the local real node (devtools.node), built
# locally since no registry is reachable: a static C program that sleeps until SIGINT/SIGTERM and
# reaps orphans (what Kubernetes' build/pause/linux/pause.c does), imported as a one-file image.
# Idempotent: does nothing when the image exists. Needs gcc (static glibc) and dockerd.
#   scripts/build-pause-image.sh [IMAGE]     # default sft-local/pause:3.4
set -euo pipefail
IMAGE="${1:-sft-local/pause:3.4}"
DOCKER="${DOCKER:-/usr/bin/docker}"
"$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1 && { echo "build-pause-image: $IMAGE exists" >&2; exit 0; }
command -v gcc >/dev/null || { echo "build-pause-image: no gcc (apt-get install gcc libc6-dev)" >&2; exit 1; }
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT
cat >"$WORK/pause.c" <<'C'
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void on_term(int sig) { (void)sig; _exit(0); }
static void on_child(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
  struct sigaction term = {.sa_handler = on_term}, child = {.sa_handler = on_child, .sa_flags = SA_NOCLDSTOP};
  if (sigaction(SIGINT, &term, NULL) < 0 || sigaction(SIGTERM, &term, NULL) < 0 ||
      sigaction(SIGCHLD, &child, NULL) < 0) return 1;
  for (;;) pause();
}
C
mkdir -p "$WORK/rootfs"
gcc -Os -Wall -Werror -static -o "$WORK/rootfs/pause" "$WORK/pause.c"
tar -C "$WORK/rootfs" -cf "$WORK/pause.tar" pause
"$DOCKER" import --change 'ENTRYPOINT ["/pause"]' "$WORK/pause.tar" "$IMAGE" >/dev/null
echo "build-pause-image: built $IMAGE" >&2
