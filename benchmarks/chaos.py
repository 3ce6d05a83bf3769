"""Chaos run: break the product on purpose, several jobs at once, and check that every job ends in
its documented state with nothing lost (issue 15's "Done when").

    PYTHONPATH=. .venv/bin/python benchmarks/chaos.py [--rounds 1] [--epochs 4]

On the real node (devtools.realstack: control plane, dockerd + kubelet, both images built, the
chart's operator as a pod; root), tiny CPU jobs in the trainer image, built offline; per round,
concurrently:

- ``preempt``: pod 0 deleted 5 times while it trains (each a SIGTERM drain that saves an on-demand
  checkpoint), with maxRestarts 0, and the operator's container SIGKILLed in the middle (the
  kubelet restarts it): Succeeded, 0 restarts, preemptions counted;
- ``suspend``: suspended while training (the status must list the full state saved on SIGTERM),
  then resumed: Succeeded;
- ``immutable``: numEpochs changed while it trains: refused (SpecValid False, ImmutableFieldChanged)
  and still Succeeded, scaled to 0;
- ``baddata``: a dataset whose line 2 has no "messages": Failed, ConfigRejected, naming the file and
  line 2.

Each Succeeded job must list only checkpoints that are on the volume, at 100 %. Prints one line
per job and a summary; exits 1 when any job ended otherwise.

Four jobs of two pods share this 2-core node, so each pod requests 200m CPU (not the 500m the
demo asks for: eight of those do not fit and would wait for a start-up timeout). 4 epochs, not the
6 of the process-based node: the real node is slower (containers, 8 trainers and their reporters
in cgroups on 2 cores; measured with 6 epochs: the round took ≈ 18 min vs ≈ 10 min there), and
every scenario acts in the first epoch anyway. Prints the stack's start-up (images included) apart
from the rounds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from devtools.realstack import ASSETS_CLAIM, RealStack
from devtools.stack import StackError, wait_until
from devtools.tiny_model import build_tiny_assets
from sft_core import contract
from sft_models.models import parse_job
from sft_models.naming import claim_name

NAMESPACE = "chaos"
JOB_TIMEOUT_S = 1500.0
PREEMPTIONS = 5
POD_CPU = "200m"  # 4 jobs x 2 pods on 2 cores


class Chaos:
    def __init__(self, stack: RealStack, assets: Path, epochs: int):
        self.stack, self.assets, self.epochs = stack, assets, epochs
        client = stack.api_client()
        self.core = kubernetes.client.CoreV1Api(client)
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.notes: dict[str, list[str]] = {}

    def note(self, job: str, text: str) -> None:
        self.notes.setdefault(job, []).append(text)
        print(f"{time.strftime('%H:%M:%S')} {job}: {text}", flush=True)

    def manifest(self, name: str, data: Path | None = None, **spec: Any) -> dict[str, Any]:
        body = self.stack.job_manifest(name, NAMESPACE, cpu=POD_CPU)
        body["spec"].update(numEpochs=self.epochs, **spec)
        if data is not None:
            body["spec"]["dataPath"] = f"/assets/{data.name}"
        return body

    def create(self, body: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(contract.GROUP, contract.VERSION, NAMESPACE, contract.PLURAL, body)

    def job(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(
            contract.GROUP, contract.VERSION, NAMESPACE, contract.PLURAL, name
        )

    def status(self, name: str) -> dict[str, Any]:
        return self.job(name).get("status") or {}

    def patch(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            contract.GROUP, contract.VERSION, NAMESPACE, contract.PLURAL, name, {"spec": spec}
        )

    def stage(self, name: str) -> str:
        return ((self.status(name).get("progress") or {}).get("stage")) or ""

    def wait_training(self, name: str) -> bool:
        """Until the job trains (True) or has finished (False)."""

        def probe() -> str | None:
            status = self.status(name)
            if status.get("phase") in ("Succeeded", "Failed"):
                return "finished"
            return "training" if (status.get("progress") or {}).get("stage") == "Training" else None

        return wait_until(f"{name} training", probe, timeout_s=JOB_TIMEOUT_S, interval_s=1.0) == "training"

    def wait_finished(self, name: str) -> dict[str, Any]:
        return wait_until(
            f"{name} finished",
            lambda: (s := self.status(name)).get("phase") in ("Succeeded", "Failed") and s,
            timeout_s=JOB_TIMEOUT_S,
            interval_s=2.0,
        )

    def claim_dir(self, name: str) -> Path:
        return self.stack.claim_dir(NAMESPACE, claim_name(parse_job(self.job(name))))

    # --- the scenarios --------------------------------------------------------------------------

    def preempt(self, name: str) -> None:
        if not self.wait_training(name):
            return
        for i in range(PREEMPTIONS):
            try:
                self.core.delete_namespaced_pod(f"{name}-0", NAMESPACE)
                self.note(name, f"pod {name}-0 deleted ({i + 1}/{PREEMPTIONS})")
            except ApiException as exc:
                if exc.status != 404:
                    raise
                self.note(name, f"pod {name}-0 not there to delete ({i + 1}/{PREEMPTIONS})")
            if i == 2:
                self.note(name, "operator SIGKILLed")
                took = self.stack.kill_operator()
                self.note(name, f"operator restarted by the kubelet and Ready {took:.1f}s after the kill")
            try:
                if not self.wait_training(name):
                    return
            except TimeoutError:
                return
            time.sleep(5)

    def suspend(self, name: str) -> None:
        if not self.wait_training(name):
            return
        self.patch(name, {"suspend": True})
        self.note(name, "suspended")
        wait_until(
            f"{name} Suspended without pods",
            lambda: (
                self.status(name).get("phase") == "Suspended"
                and not self.core.list_namespaced_pod(
                    NAMESPACE, label_selector=f"{contract.LABEL_JOB_NAME}={name}"
                ).items
            ),
            timeout_s=300,
            interval_s=1.0,
        )
        time.sleep(5)
        full = ((self.status(name).get("progress") or {}).get("latestFullState") or {}).get("name")
        on_disk = sorted(p.name for p in (self.claim_dir(name) / "full_state").glob("*") if p.is_dir())
        self.note(name, f"status latestFullState {full}, on the volume {on_disk}")
        if not on_disk or full != on_disk[-1]:
            self.note(name, "MISMATCH: the suspended status does not show the newest full state")
        self.patch(name, {"suspend": False})
        self.note(name, "resumed")

    def immutable(self, name: str) -> None:
        if not self.wait_training(name):
            return
        self.patch(name, {"numEpochs": self.epochs + 3})
        self.note(name, f"numEpochs changed to {self.epochs + 3} while training")

    # --- checks ---------------------------------------------------------------------------------

    def check(self, name: str, want_phase: str, want_reason: str) -> bool:
        status = self.status(name)
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        reason = (conditions.get("Complete" if want_phase == "Succeeded" else "Failed") or {}).get("reason")
        ok = (status.get("phase"), reason) == (want_phase, want_reason)
        facts = (
            f"phase {status.get('phase')} ({reason}), restarts {status.get('restarts')}, preemptions "
            f"{status.get('preemptions')}"
        )
        if want_phase == "Succeeded":
            progress = status.get("progress") or {}
            listed = [c["path"] for c in progress.get("checkpoints") or []]
            missing = [p for p in listed if not (self.claim_dir(name) / p).is_dir()]
            ok = ok and progress.get("percent") == 100 and not missing and status.get("restarts") == 0
            facts += f", {len(listed)} checkpoints listed, missing on disk: {missing or 'none'}"
            sts = kubernetes.client.AppsV1Api(self.stack.api_client()).read_namespaced_stateful_set(name, NAMESPACE)
            ok = ok and sts.spec.replicas == 0
            facts += f", StatefulSet replicas {sts.spec.replicas}"
        else:
            facts += f": {(conditions.get('Failed') or {}).get('message')}"
        if name.endswith("immutable"):
            valid = conditions.get("SpecValid") or {}
            ok = ok and valid.get("reason") == "ImmutableFieldChanged"
            facts += f", SpecValid {valid.get('status')} {valid.get('reason')}"
        if any("MISMATCH" in n for n in self.notes.get(name, [])):
            ok = False
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {facts}", flush=True)
        return ok


def bad_dataset(assets: Path) -> Path:
    lines = (assets / "data.jsonl").read_text().splitlines()
    broken = assets / "bad.jsonl"
    second = json.loads(lines[1])
    second.pop("messages", None)
    second["conversation"] = "no messages here"
    broken.write_text("\n".join([lines[0], json.dumps(second), *lines[2:]]) + "\n")
    return broken


def run_round(chaos: Chaos, round_no: int) -> bool:
    prefix = f"r{round_no}"
    bad = bad_dataset(chaos.assets)
    jobs = {
        f"{prefix}-preempt": (
            chaos.manifest(f"{prefix}-preempt", maxRestarts=0),
            chaos.preempt,
            "Succeeded",
            "TrainingCompleted",
        ),
        f"{prefix}-suspend": (chaos.manifest(f"{prefix}-suspend"), chaos.suspend, "Succeeded", "TrainingCompleted"),
        f"{prefix}-immutable": (
            chaos.manifest(f"{prefix}-immutable"),
            chaos.immutable,
            "Succeeded",
            "TrainingCompleted",
        ),
        f"{prefix}-baddata": (chaos.manifest(f"{prefix}-baddata", data=bad), None, "Failed", "ConfigRejected"),
    }
    for body, *_ in jobs.values():
        chaos.create(body)
    threads = [
        threading.Thread(target=action, args=(name,), daemon=True)
        for name, (_, action, *_) in jobs.items()
        if action is not None
    ]
    for thread in threads:
        thread.start()
    for name in jobs:
        try:
            chaos.wait_finished(name)
        except TimeoutError as exc:
            print(f"FAIL {name}: {exc}", flush=True)
    for thread in threads:
        thread.join(timeout=5)
    return all([chaos.check(name, phase, reason) for name, (_, _, phase, reason) in jobs.items()])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the state directory")
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="sft-chaos-"))
    started = stack_up = time.monotonic()
    rounds_done: float | None = None
    results = []
    stack = RealStack(state / "stack", on_step=lambda msg: print(f"realstack: {msg}", flush=True))
    try:
        stack.start()
        stack_up = time.monotonic()
        kubernetes.client.CoreV1Api(stack.api_client()).create_namespace({"metadata": {"name": NAMESPACE}})
        assert stack.cp is not None
        stack.cp.wait_for_default_service_account(NAMESPACE)
        built = build_tiny_assets(state / "assets").data_path.parent
        # The model and data on a claim (root's files, read-only in the pods); bad data goes there too.
        chaos = Chaos(stack, stack.fill_claim(NAMESPACE, ASSETS_CLAIM, built), args.epochs)
        for round_no in range(1, args.rounds + 1):
            results.append(run_round(chaos, round_no))
        rounds_done = time.monotonic()
    except StackError as exc:
        print(f"chaos: the real-node stack failed: {exc}", flush=True)
        results.append(False)
    finally:
        stack.stop(remove_claim_dirs=not args.keep)
        if not args.keep:
            shutil.rmtree(state, ignore_errors=True)
    print(
        f"chaos: {sum(results)}/{len(results)} rounds with every job in its documented state, "
        f"{(rounds_done or time.monotonic()) - stack_up:.0f} s "
        f"(the real-node stack's start-up before: {stack_up - started:.0f} s)"
    )
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
