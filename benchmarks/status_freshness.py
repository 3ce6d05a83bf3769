"""Status freshness: how soon a new checkpoint shows in an SFTJob's status, and how many API
writes the reporter sidecar makes, over a real tiny training run on this machine.

    PYTHONPATH=. .venv/bin/python benchmarks/status_freshness.py [--samples 240] [--epochs 5] [--save-samples 120]

Runs on the real node (devtools.realstack: control plane, dockerd + kubelet, both images built,
the chart's operator as a pod; root) a tiny CPU job in the trainer image with the reporter sidecar
(examples/sftjob-tiny-cpu.yaml with more samples/epochs and spec.saveSamples, so there are several
checkpoints).

(a) checkpoint-to-status latency: a thread polls the claim's host directory every 0.1 s and
    timestamps the moment each hf_format/<name> becomes complete (config.json + weights, the
    reporter's own rule); a watch on the SFTJob timestamps the first event listing it in
    status.progress.checkpoints. Target: < 30 s.
(b) the reporter's API writes: PATCHes of the job's progress ConfigMap in the apiserver's audit
    log (ControlPlane.write_requests), per minute of the run (from the first one to the job's
    Succeeded), and the operator's status writes for comparison.

Prints figures; asserts nothing. Machine noise (shared cores) shows in the numbers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from devtools.demo import describe, follow_job
from devtools.realstack import ASSETS_CLAIM, RealStack
from devtools.stack import StackError
from devtools.tiny_model import build_tiny_assets
from sft_core import contract
from sft_core.checkpoints import HF_FORMAT_DIR
from sft_core.contract import progress_configmap_name
from sft_models.models import parse_job
from sft_models.naming import claim_name

TARGET_S = 30.0
POD_CPU = "500m"  # two pods and their reporters on a 2-core node
POLL_S = 0.1
HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


class DiskWatcher(threading.Thread):
    """Timestamps (monotonic) the first sight of each complete hf_format checkpoint."""

    def __init__(self, root: Path):
        super().__init__(daemon=True)
        self.root = root
        self.seen: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            base = self.root / HF_FORMAT_DIR
            try:
                entries = list(base.iterdir()) if base.is_dir() else []
            except FileNotFoundError:
                entries = []
            now = time.monotonic()
            for entry in entries:
                if entry.name in self.seen:
                    continue
                if (entry / "config.json").is_file() and any((entry / w).is_file() for w in HF_WEIGHT_FILES):
                    self.seen[entry.name] = now
            self.stop.wait(POLL_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=240, help="samples in the tiny data set")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--save-samples", type=int, default=120, help="spec.saveSamples (0: epoch ends only)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the job")
    parser.add_argument("--state-dir", type=Path, default=None, help="default: a temporary directory")
    args = parser.parse_args(argv)

    import kubernetes

    state_dir = (args.state_dir or Path(tempfile.mkdtemp(prefix="sft-freshness-"))).resolve()
    namespace = "default"
    assets = build_tiny_assets(state_dir / "assets", num_samples=args.samples)

    print(
        f"tiny job: {args.samples} samples x {args.epochs} epochs, saveSamples {args.save_samples}, "
        f"2 pods x 1 process, CPU, {POD_CPU} CPU requested per pod; state in {state_dir}"
    )
    stack = RealStack(state_dir / "stack", on_step=lambda msg: print(f"realstack: {msg}", flush=True))
    try:
        stack.start()
        stack.fill_claim(namespace, ASSETS_CLAIM, assets.model_dir.parent)  # the job's model and data
        manifest = stack.job_manifest("freshness", namespace, cpu=POD_CPU)
        manifest["spec"].update(numEpochs=args.epochs, saveSamples=args.save_samples)
        name = manifest["metadata"]["name"]
        assert stack.cp is not None
        audit_mark = stack.cp.audit_position()
        custom = kubernetes.client.CustomObjectsApi(stack.api_client())
        created = time.monotonic()
        custom.create_namespaced_custom_object(contract.GROUP, contract.VERSION, namespace, contract.PLURAL, manifest)
        # The operator makes the claim; the provisioner binds it to a host directory.
        disk = DiskWatcher(stack.claim_dir(namespace, claim_name(parse_job(manifest))))
        disk.start()

        in_status: dict[str, float] = {}
        running_at: list[float] = []
        last_line = [""]

        def on_update(job: dict[str, Any]) -> None:
            now = time.monotonic()
            status = job.get("status") or {}
            if status.get("phase") == "Running" and not running_at:
                running_at.append(now)
            for ckpt in (status.get("progress") or {}).get("checkpoints") or []:
                in_status.setdefault(ckpt["name"], now)
            line = describe(job)
            if line != last_line[0]:
                last_line[0] = line
                print(f"  {now - created:6.1f}s {line}")

        job = follow_job(stack.api_client(), namespace, name, args.timeout, on_update)
        finished = time.monotonic()
        time.sleep(1.0)  # the disk watcher's last poll
        disk.stop.set()
        disk.join()
        writes = stack.cp.write_requests(since=audit_mark, namespace=namespace)
    except (StackError, TimeoutError) as exc:
        print(f"the real-node stack failed: {exc}" if isinstance(exc, StackError) else str(exc))
        return 1
    finally:
        stack.stop()

    phase = (job.get("status") or {}).get("phase")
    print(
        f"\njob {phase} after {finished - created:.1f}s (Running -> {phase}: {finished - running_at[0]:.1f}s)"
        if running_at
        else f"\njob {phase}"
    )

    print("\n(a) checkpoint-to-status latency (complete on disk -> listed in status.progress.checkpoints)")
    order = sorted(set(disk.seen) | set(in_status), key=lambda n: disk.seen.get(n, in_status.get(n, 0.0)))
    latencies = []
    print(f"  {'checkpoint':<14} {'on disk':>9} {'in status':>10} {'latency':>8}")
    for ckpt in order:
        on_disk, listed = disk.seen.get(ckpt), in_status.get(ckpt)
        latency = listed - on_disk if on_disk is not None and listed is not None else None
        if latency is not None:
            latencies.append(latency)
        fmt = lambda t: f"{t - created:8.1f}s" if t is not None else "   never"  # noqa: E731
        print(
            f"  {ckpt:<14} {fmt(on_disk):>9} {fmt(listed):>10} "
            f"{f'{latency:7.1f}s' if latency is not None else '      -'}"
        )
    if latencies:
        print(
            f"  {len(latencies)} checkpoints: median {statistics.median(latencies):.1f}s, "
            f"max {max(latencies):.1f}s (target < {TARGET_S:.0f}s: "
            f"{'met' if max(latencies) < TARGET_S else 'MISSED'})"
        )
    missing = sorted(set(disk.seen) - set(in_status))
    if missing:
        print(f"  on disk but never listed: {', '.join(missing)}")

    cm = progress_configmap_name(name)
    reporter = [w for w in writes if w.resource == "configmaps" and w.name == cm and w.verb.lower() == "patch"]
    by_user = Counter(w.user for w in reporter)
    status_writes = [w for w in writes if w.resource == contract.PLURAL and w.subresource == "status"]
    print("\n(b) the reporter's API writes (PATCH configmaps/" + cm + ", from the audit log)")
    if reporter:
        start = running_at[0] if running_at else created
        minutes = (finished - start) / 60.0
        print(
            f"  {len(reporter)} writes over {finished - start:.1f}s of running job: "
            f"{len(reporter) / minutes:.1f} writes/min ({', '.join(f'{u}: {n}' for u, n in by_user.items())})"
        )
        print(f"  failed writes: {sum(1 for w in reporter if w.code >= 400)}")
    else:
        print("  none recorded")
    print(f"  for comparison, the operator's SFTJob status writes: {len(status_writes)}")
    return 0 if phase == "Succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
