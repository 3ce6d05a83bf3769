"""Warm start-up and stop time of the local control plane (binaries already provisioned).

    PYTHONPATH=. KUBEBUILDER_ASSETS="$(scripts/provision-k8s.sh)" .venv/bin/python benchmarks/controlplane_startup.py [runs]

Start-up is measured to the point the fixture hands the control plane out: /readyz ok and the
controllers running (the default ServiceAccount has its token). Target: under 10 s.
"""

from __future__ import annotations

import statistics
import sys
import time

from devtools.controlplane import ControlPlane, ControlPlaneError, resolve_assets

TARGET_S = 10.0


def main(runs: int = 3) -> int:
    try:
        assets = resolve_assets()
    except ControlPlaneError as e:
        print(f"controlplane_startup: error: {e.summary}", file=sys.stderr)
        return 1
    rows = []
    for i in range(runs):
        cp = ControlPlane(assets=assets)
        cp.start()
        t = time.monotonic()
        cp.stop()
        rows.append({**cp.timings, "stop": time.monotonic() - t})
        print(
            f"run {i + 1}: pki {rows[-1]['pki']:.2f}s  apiserver ready {rows[-1]['apiserver_ready']:.2f}s  "
            f"controllers ready {rows[-1]['controllers_ready']:.2f}s  stop {rows[-1]['stop']:.2f}s"
        )
    start = statistics.median(r["controllers_ready"] for r in rows)
    stop = statistics.median(r["stop"] for r in rows)
    verdict = "ok" if start < TARGET_S else f"SLOWER than the {TARGET_S:.0f} s target"
    print(f"control plane warm start-up: {start:.2f} s median of {runs} ({verdict}); stop: {stop:.2f} s")
    return 0 if start < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
