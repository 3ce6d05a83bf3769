"""Run policy on the real node: how soon each policy acts, and the API writes it costs.

    PYTHONPATH=. .venv/bin/python benchmarks/run_policy.py [--stall-timeout 60] [--startup-timeout 30] [--saving-bound 300] [--only SCENARIO ...]

Runs on the real node (devtools.realstack: control plane, dockerd + kubelet, both images built,
the chart's operator as a pod with its policy clock at 5 s; root) tiny CPU jobs in the trainer
image, one scenario at a time, and prints per policy:

- rank failure: `docker kill -s KILL` of rank 1's trainer container -> rank 0's trainer restarted
  (the whole-group restart), seconds; for comparison, the same kill with the operator scaled to
  0 (what the surviving rank does on its own: torch's collective timeout or a closed socket);
- stall: SIGSTOP of every process of rank 1's trainer -> the operator's stall restart, seconds
  after the freeze, and which bound applied (spec.stallTimeoutSeconds while training; the Saving
  stage's, spec.startupTimeoutSeconds, when rank 0 ran on into a save). No baseline without the
  operator: the surviving rank waits in its collective for torch's timeout (30 minutes by default);
- start-up: an image that cannot be pulled -> Failed StartupTimeout, seconds past
  spec.startupTimeoutSeconds, and how soon the status first named the kubelet's reason;
- deadline: spec.activeDeadlineSeconds passed -> Failed DeadlineExceeded (pods stopped), seconds;
- TTL: Failed + ttlSecondsAfterFinished -> the SFTJob gone, seconds late;

and the API writes the operator (its ServiceAccount, from the audit log) made for each, by verb and
resource. Prints figures; asserts nothing. Machine noise (2 shared cores) shows in the numbers.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import kubernetes
from kubernetes.client.exceptions import ApiException

from devtools.node import docker
from devtools.realstack import ASSETS_CLAIM, OPERATOR_NS, RealStack
from devtools.stack import StackError, wait_until
from devtools.tiny_model import build_tiny_assets
from sft_core import contract
from sft_models.models import parse_job
from sft_models.naming import statefulset_name

NAMESPACE = "run-policy"
SCENARIOS = ["startup", "ttl", "rank-failure", "rank-failure-alone", "stall", "deadline"]
POLICY_INTERVAL_S = 5


class Bench:
    def __init__(self, stack: RealStack, assets: Path):
        self.stack, self.assets = stack, assets
        api = stack.api_client()
        self.core = kubernetes.client.CoreV1Api(api)
        self.apps = kubernetes.client.AppsV1Api(api)
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.rows: list[tuple[str, str, str]] = []

    # -- jobs --

    def create(self, name: str, image: str | None = None, **spec: Any) -> dict[str, Any]:
        manifest = self.stack.job_manifest(name, NAMESPACE)
        if image:
            manifest["spec"]["pod"]["image"] = image
        manifest["spec"].update(spec)
        return self.custom.create_namespaced_custom_object(
            contract.GROUP, contract.VERSION, NAMESPACE, contract.PLURAL, manifest
        )

    def status(self, name: str) -> dict[str, Any]:
        try:
            return (
                self.custom.get_namespaced_custom_object(
                    contract.GROUP, contract.VERSION, NAMESPACE, contract.PLURAL, name
                ).get("status")
                or {}
            )
        except ApiException as e:
            if e.status == 404:
                return {"gone": True}
            raise

    def training(self, name: str, more_than: int = 0) -> Callable[[], bool]:
        def probe() -> bool:
            status = self.status(name)
            progress = status.get("progress") or {}
            return (
                status.get("phase") == "Running"
                and progress.get("stage") == "Training"
                and progress.get("samplesSeen", 0) > more_than
            )

        return probe

    def trainer_started_at(self, pod: str) -> Any:
        try:
            p = self.core.read_namespaced_pod(pod, NAMESPACE)
        except ApiException:
            return None
        for c in p.status.container_statuses or []:
            if c.name == contract.TRAINER_CONTAINER and c.state.running:
                return c.state.running.started_at
        return None

    def delete(self, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(
                contract.GROUP, contract.VERSION, NAMESPACE, contract.PLURAL, name
            )
        except ApiException as e:
            if e.status != 404:
                raise
        wait_until(
            f"{name}'s pods gone",
            lambda: (
                not self.core.list_namespaced_pod(NAMESPACE, label_selector=f"{contract.LABEL_JOB_NAME}={name}").items
            ),
            timeout_s=180,
            interval_s=1,
        )

    def scale_operator(self, replicas: int) -> None:
        deployments = self.apps.list_namespaced_deployment(OPERATOR_NS).items
        for d in deployments:
            self.apps.patch_namespaced_deployment_scale(d.metadata.name, OPERATOR_NS, {"spec": {"replicas": replicas}})
        if replicas == 0:
            wait_until(
                "the operator pod gone",
                lambda: not self.core.list_namespaced_pod(OPERATOR_NS).items,
                timeout_s=120,
                interval_s=1,
            )
        else:
            wait_until(
                "the operator pod Ready",
                lambda: any(
                    p.status.container_statuses and all(c.ready for c in p.status.container_statuses)
                    for p in self.core.list_namespaced_pod(OPERATOR_NS).items
                ),
                timeout_s=180,
                interval_s=1,
            )
            self.stack.operator_pod = self.core.list_namespaced_pod(OPERATOR_NS).items[0].metadata.name

    # -- measuring --

    def operator_writes(self, since: int) -> str:
        assert self.stack.cp is not None
        # The operator's ServiceAccount (the chart's, in OPERATOR_NS), not the reporters' or kubelet's.
        writes = [
            w
            for w in self.stack.cp.write_requests(since=since, namespace=NAMESPACE)
            if w.user.startswith(f"system:serviceaccount:{OPERATOR_NS}:")
        ]
        counts = Counter(f"{w.verb} {w.resource}{'/' + w.subresource if w.subresource else ''}" for w in writes)
        return f"{len(writes)} ({', '.join(f'{k} {v}' for k, v in sorted(counts.items())) or 'none'})"

    def row(self, policy: str, figure: str, writes: str) -> None:
        self.rows.append((policy, figure, writes))
        print(f"{policy}: {figure}; operator writes {writes}", flush=True)


def rank_failure(b: Bench, with_operator: bool) -> None:
    name = "rank-kill" if with_operator else "rank-kill-alone"
    job = b.create(name, numEpochs=2000, fullStateRetention=2, maxRestarts=5)
    sts = statefulset_name(parse_job(job))
    wait_until(f"{name} training", b.training(name), timeout_s=600, interval_s=0.5)
    if not with_operator:
        b.scale_operator(0)
    survivor_uid = b.core.read_namespaced_pod(f"{sts}-0", NAMESPACE).metadata.uid
    survivor = b.trainer_started_at(f"{sts}-0")
    mark = b.stack.cp.audit_position()
    killed = time.monotonic()
    docker("kill", "--signal", "KILL", b.stack.pod_container(NAMESPACE, f"{sts}-1", contract.TRAINER_CONTAINER))

    def survivor_stopping() -> bool:
        """Rank 0's old run is over or being ended: its pod deleted or replaced (the operator's
        group restart), or its trainer no longer running since before (it noticed on its own)."""
        try:
            pod = b.core.read_namespaced_pod(f"{sts}-0", NAMESPACE)
        except ApiException:
            return True
        return (
            pod.metadata.uid != survivor_uid
            or pod.metadata.deletion_timestamp is not None
            or b.trainer_started_at(f"{sts}-0") != survivor
        )

    try:
        wait_until("rank 0 stopping", survivor_stopping, timeout_s=300, interval_s=0.2)
        figure = f"rank 0's run ended or being ended {time.monotonic() - killed:.1f}s after rank 1 was killed"
    except TimeoutError:
        figure = "rank 0 still in its old run 300 s after rank 1 was killed"
    label = "rank failure (whole-group restart)" if with_operator else "rank failure, no operator (before)"
    b.row(label, figure, b.operator_writes(mark) if with_operator else "-")
    if not with_operator:
        b.scale_operator(1)
    b.delete(name)


def stall(b: Bench, stall_timeout: int, saving_bound: int) -> None:
    name = "stall"
    job = b.create(
        name,
        numEpochs=2000,
        fullStateRetention=2,
        maxRestarts=5,
        stallTimeoutSeconds=stall_timeout,
        startupTimeoutSeconds=saving_bound,
    )
    sts = statefulset_name(parse_job(job))
    wait_until("stall job training", b.training(name), timeout_s=600, interval_s=0.5)
    # A loaded machine may take longer than the bound to a run's first step: a stall restart then
    # comes before the freeze. The freeze's is the next one.
    before = b.status(name).get("stallRestarts", 0)
    mark = b.stack.cp.audit_position()
    frozen = time.monotonic()
    for pid in RealStack.container_pids(b.stack.pod_container(NAMESPACE, f"{sts}-1", contract.TRAINER_CONTAINER)):
        os.kill(pid, signal.SIGSTOP)
    wait_until(
        "the stall restart",
        lambda: b.status(name).get("stallRestarts", 0) > before,
        timeout_s=saving_bound + 240,
        interval_s=0.2,
    )
    detected = time.monotonic() - frozen
    # The event names the bound that applied: the stage the status showed when it counted as
    # stalled (rank 0 runs on into its next collective: a save when the freeze came near an epoch end).
    event = next(
        (
            e.message
            for e in reversed(b.core.list_namespaced_event(NAMESPACE).items)
            if e.reason == "Stalled" and e.involved_object.name == name
        ),
        "",
    )
    false = f"; {before} stall restart(s) before the freeze (first step slower than the bound)" if before else ""
    b.row(
        "stall (SIGSTOP of rank 1)",
        f"every rank restarted {detected:.1f}s after the freeze{false}; the Stalled "
        f"event: {event.split('; restarting')[0] or 'none'}",
        b.operator_writes(mark),
    )
    b.delete(name)


def startup(b: Bench, timeout: int) -> None:
    name = "no-image"
    mark = b.stack.cp.audit_position()
    created = time.monotonic()
    b.create(name, image="sft-local/no-such-trainer:missing", startupTimeoutSeconds=timeout)

    def named() -> bool:
        ready = next((c for c in b.status(name).get("conditions", []) if c["type"] == "Ready"), {})
        return "ImagePull" in (ready.get("message") or "") or "ErrImage" in (ready.get("message") or "")

    wait_until("the pull error in the status", named, timeout_s=timeout + 120, interval_s=0.2)
    shown = time.monotonic() - created
    wait_until(
        "Failed StartupTimeout",
        lambda: b.status(name).get("phase") == "Failed",
        timeout_s=timeout + 180,
        interval_s=0.2,
    )
    late = time.monotonic() - created - timeout
    b.row(
        "start-up (image cannot be pulled)",
        f"reason in status {shown:.1f}s after create; Failed {late:.1f}s after startupTimeoutSeconds ({timeout} s)",
        "the job's whole life: " + b.operator_writes(mark),
    )
    b.delete(name)


def deadline(b: Bench) -> None:
    name = "deadline"
    b.create(name, numEpochs=2000, fullStateRetention=2)
    wait_until("deadline job training", b.training(name), timeout_s=600, interval_s=0.5)
    mark = b.stack.cp.audit_position()
    patched = time.monotonic()
    b.custom.patch_namespaced_custom_object(
        contract.GROUP, contract.VERSION, NAMESPACE, contract.PLURAL, name, {"spec": {"activeDeadlineSeconds": 1}}
    )
    wait_until(
        "Failed DeadlineExceeded", lambda: b.status(name).get("phase") == "Failed", timeout_s=180, interval_s=0.2
    )
    failed = time.monotonic() - patched
    wait_until(
        "the pods gone",
        lambda: not b.core.list_namespaced_pod(NAMESPACE, label_selector=f"{contract.LABEL_JOB_NAME}={name}").items,
        timeout_s=180,
        interval_s=0.5,
    )
    b.row(
        "deadline (already past when set)",
        f"Failed {failed:.1f}s after the deadline was set, pods gone "
        f"{time.monotonic() - patched:.1f}s after (SIGTERM checkpoint within the grace period)",
        b.operator_writes(mark),
    )
    b.delete(name)


def ttl(b: Bench) -> None:
    name = "ttl"
    mark = b.stack.cp.audit_position()
    b.create(name, dataPath="/assets/no-such-data.jsonl", ttlSecondsAfterFinished=5)
    wait_until("ttl job Failed", lambda: b.status(name).get("phase") == "Failed", timeout_s=600, interval_s=0.2)
    failed = time.monotonic()
    wait_until("ttl job gone", lambda: b.status(name).get("gone"), timeout_s=120, interval_s=0.2)
    b.row(
        "TTL (ttlSecondsAfterFinished 5)",
        f"deleted {time.monotonic() - failed - 5:.1f}s after the TTL ran out",
        "the job's whole life: " + b.operator_writes(mark),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stall-timeout", type=int, default=60)
    parser.add_argument("--startup-timeout", type=int, default=30)
    parser.add_argument("--only", nargs="*", choices=SCENARIOS, default=SCENARIOS, help="scenarios to run")
    parser.add_argument(
        "--saving-bound",
        type=int,
        default=300,
        help="the stall job's startupTimeoutSeconds, which also bounds its Saving stage",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run_policy: needs root (the real node)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="sft-bench-policy-") as tmp:
        state = Path(tmp)
        assets = build_tiny_assets(state / "assets").model_dir.parent
        stack = RealStack(
            state / "stack",
            on_step=lambda m: print(f"realstack: {m}", flush=True),
            helm_set=["extraEnv[0].name=SFT_POLICY_INTERVAL_S"],
            helm_set_string=[f"extraEnv[0].value={POLICY_INTERVAL_S}"],
        )
        try:
            stack.start()
            kubernetes.client.CoreV1Api(stack.api_client()).create_namespace({"metadata": {"name": NAMESPACE}})
            assert stack.cp is not None
            stack.cp.wait_for_default_service_account(NAMESPACE)
            b = Bench(stack, stack.fill_claim(NAMESPACE, ASSETS_CLAIM, assets))
            runs: dict[str, Callable[[], None]] = {
                "startup": lambda: startup(b, args.startup_timeout),
                "ttl": lambda: ttl(b),
                "rank-failure": lambda: rank_failure(b, with_operator=True),
                "rank-failure-alone": lambda: rank_failure(b, with_operator=False),
                "stall": lambda: stall(b, args.stall_timeout, args.saving_bound),
                "deadline": lambda: deadline(b),
            }
            for scenario in SCENARIOS:
                if scenario in args.only:
                    runs[scenario]()
        except (StackError, TimeoutError) as e:
            print(f"run_policy: {e}", file=sys.stderr)
            print(stack.operator_log(), file=sys.stderr)
            return 1
        finally:
            stack.stop()
    print(f"\nrun policy on the real node (policy clock {POLICY_INTERVAL_S} s; 2 shared cores)")
    width = max(len(r[0]) for r in b.rows)
    for policy, figure, writes in b.rows:
        print(f"  {policy:<{width}}  {figure}\n  {'':<{width}}  operator writes: {writes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
