"""The newcomer's first run, in CI: the real control plane, the real operator (`sft-operator run`)
and the dev local node train the demo job (examples/sftjob-tiny-cpu.yaml: 2 nodes x 1 process,
CPU, a tiny model built offline) to Succeeded, and the status must tell the truth about it,
checked against the checkpoint volume itself. A job whose data does not exist must end Failed
(ConfigRejected) without touching the checkpoints already on its claim.

One operator and one local node serve the whole module, both limited to the module's namespace
(the control plane is the session's, shared with the integration tests).
"""

from __future__ import annotations

import copy
import hashlib
import json
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from sft_operator import contract
from sft_operator.checkpoints import (
    HF_FORMAT_DIR,
    RUNS_LOG_FILE,
    metrics_log_path,
    read_metrics_log,
)
from devtools.demo import demo_manifest, describe, follow_job
from devtools.localnode import LocalNode
from devtools.stack import OperatorProcess, install_crd, wait_until
from devtools.tiny_model import build_tiny_assets
from sft_operator.models import parse_job
from sft_operator.render import claim_name, statefulset_name

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

NODE_NAME = "localnode-e2e"
JOB_TIMEOUT_S = 180.0
# How long a finished job is watched after the operator restarts: the restarted operator lists
# the job at once (its first reconcile is within a second or two), so anything it would wrongly
# do (scale up, create pods, start a run) has happened by then.
AFTER_RESTART_S = 12.0
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")


@dataclass
class Stack:
    namespace: str
    api_client: Any
    operator: OperatorProcess
    node: LocalNode
    assets_dir: Path

    @property
    def core(self) -> Any:
        return kubernetes.client.CoreV1Api(self.api_client)

    @property
    def apps(self) -> Any:
        return kubernetes.client.AppsV1Api(self.api_client)

    @property
    def custom(self) -> Any:
        return kubernetes.client.CustomObjectsApi(self.api_client)

    def create_job(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(
            contract.GROUP, contract.VERSION, self.namespace, contract.PLURAL, manifest)

    def job(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(
            contract.GROUP, contract.VERSION, self.namespace, contract.PLURAL, name)

    def follow(self, name: str) -> dict[str, Any]:
        seen: list[str] = []

        def on_update(job: dict[str, Any]) -> None:
            line = describe(job)
            if not seen or seen[-1] != line:
                seen.append(line)
                print(f"{time.strftime('%H:%M:%S')} {name}: {line}")

        try:
            return follow_job(self.api_client, self.namespace, name, JOB_TIMEOUT_S, on_update)
        except TimeoutError:
            self.show_where_stuck()
            raise

    def show_where_stuck(self) -> None:
        """After a timeout, in the failure's own output: each launcher's stacks (SIGQUIT makes it
        print them to its log and go on), the pods' logs, the operator's log."""
        pids = self.node.signal_processes(signal.SIGQUIT, "sft-trainer")
        print(f"--- SIGQUIT sent to launcher processes {pids} ---")
        time.sleep(2)
        for log in sorted((self.node.state_dir / "logs").glob("**/*.log")):
            print(f"--- {log} ---\n{_tail(log, 8000)}")
        print(f"--- operator log ({self.operator.log_file}) ---\n{_tail(self.operator.log_file)}")

    def replicas(self, job: dict[str, Any]) -> int | None:
        sts = self.apps.read_namespaced_stateful_set(statefulset_name(parse_job(job)), self.namespace)
        return sts.spec.replicas

    def pods(self, name: str) -> list[Any]:
        return self.core.list_namespaced_pod(
            self.namespace, label_selector=f"{contract.LABEL_JOB_NAME}={name}").items

    def events(self, name: str) -> list[Any]:
        return self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name}").items

    def claim_dir(self, job: dict[str, Any]) -> Path:
        return self.node.claim_dir(self.namespace, claim_name(parse_job(job)))

    def manifest(self, name: str, **spec: Any) -> dict[str, Any]:
        manifest = copy.deepcopy(demo_manifest(self.assets_dir))
        manifest["metadata"] = {"name": name, "namespace": self.namespace}
        manifest["spec"].update(spec)
        return manifest


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return "(none)"


def _wait_jobs_gone(api_client: Any, namespace: str, timeout_s: float = 30.0) -> None:
    custom = kubernetes.client.CustomObjectsApi(api_client)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            items = custom.list_namespaced_custom_object(
                contract.GROUP, contract.VERSION, namespace, contract.PLURAL)["items"]
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        if not items:
            return
        time.sleep(0.5)
    print(f"SFTJobs in {namespace} still there after {timeout_s:.0f}s (namespace left Terminating)")


@pytest.fixture(scope="module")
def stack(control_plane: Any, api_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from devtools.controlplane import fresh_namespace_name

    work = tmp_path_factory.mktemp("e2e")
    assets = build_tiny_assets(work / "assets")
    install_crd(api_client)
    core = kubernetes.client.CoreV1Api(api_client)
    namespace = fresh_namespace_name("e2e-local-run")
    core.create_namespace(kubernetes.client.V1Namespace(metadata=kubernetes.client.V1ObjectMeta(name=namespace)))
    control_plane.wait_for_default_service_account(namespace)
    operator = OperatorProcess(control_plane.kubeconfig, [namespace], work / "operator.log")
    node = LocalNode(control_plane.kubeconfig, work / "node", NODE_NAME, stop_grace_s=5.0,
                     schedules=lambda ns: ns == namespace)
    try:
        operator.start()
        node.start()
        yield Stack(namespace, api_client, operator, node, assets.model_dir.parent)
    finally:
        try:
            # While the operator runs, so that it lifts its finalizers and the namespace goes away.
            try:
                core.delete_namespace(namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise
            _wait_jobs_gone(api_client, namespace)
        finally:
            node.stop()
            operator.stop()
            print(f"--- operator log ({operator.log_file}) ---\n{_tail(operator.log_file)}")
            for log in sorted((work / "node").glob("logs/**/*.log")):
                print(f"--- {log} ---\n{_tail(log, 2000)}")
        control_plane.check()
    assert node.container_pids() == [], "the local node left containers running"
    assert not operator.alive()


def _complete_hf_dirs(root: Path) -> set[str]:
    base = root / HF_FORMAT_DIR
    if not base.is_dir():
        return set()
    return {
        d.name for d in base.iterdir()
        if d.is_dir() and (d / "config.json").is_file() and any((d / w).is_file() for w in HF_WEIGHT_FILES)
    }


def _runs(root: Path) -> list[str]:
    path = root / RUNS_LOG_FILE
    return [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _digest(root: Path) -> dict[str, str]:
    """Every file under root with its content's hash (directories included as '<dir>')."""
    return {
        str(p.relative_to(root)): "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def test_demo_job_succeeds_and_status_tells_the_truth(stack: Stack) -> None:
    name = "tiny-sft"
    stack.create_job(stack.manifest(name))
    job = stack.follow(name)
    status = job.get("status") or {}
    assert status.get("phase") == "Succeeded", json.dumps(status, indent=1)
    assert status.get("completionTime"), status

    complete = next((c for c in status.get("conditions", []) if c["type"] == "Complete"), None)
    assert complete is not None and complete["status"] == "True", status.get("conditions")

    progress = status.get("progress") or {}
    assert progress.get("stage") == "Completed", progress
    assert progress.get("percent") == 100, progress
    assert progress.get("epoch") == progress.get("numEpochs") == 2, progress

    # Every listed checkpoint exists, complete, under the claim's directory; every complete
    # checkpoint on disk is listed.
    root = stack.claim_dir(job)
    listed = progress.get("checkpoints") or []
    assert listed, progress
    on_disk = _complete_hf_dirs(root)
    for ckpt in listed:
        path = root / ckpt["path"]
        assert path.is_dir(), f"{ckpt} is listed but {path} does not exist"
        assert (path / "config.json").is_file(), f"{path} has no config.json"
        assert any((path / w).is_file() for w in HF_WEIGHT_FILES), f"{path} has no weights"
        assert ckpt["path"] == f"{HF_FORMAT_DIR}/{ckpt['name']}"
    assert {c["name"] for c in listed} == on_disk
    assert progress.get("latestCheckpoint") == listed[-1]["name"]

    # The metrics match the log: the last step line of the rank-0 metrics log.
    metrics = read_metrics_log(metrics_log_path(root))
    assert metrics.steps, f"no step line in {metrics_log_path(root)}"
    last = metrics.steps[-1]
    assert progress.get("samplesSeen") == last.samples_seen, (progress, last)
    assert last.avg_loss is not None
    assert progress.get("lastLoss") == f"{last.avg_loss:.4f}", (progress, last)

    # Scaled to 0 for good, an Event says Succeeded.
    wait_until("the StatefulSet scaled to 0", lambda: stack.replicas(job) == 0, timeout_s=30)
    events = stack.events(name)
    assert any(e.reason == "Succeeded" for e in events), [(e.reason, e.message) for e in events]

    # A finished job never trains again, even after an operator restart.
    wait_until("the job's pods to be gone", lambda: not stack.pods(name), timeout_s=60, interval_s=0.5)
    runs_before = _runs(root)
    assert len(runs_before) >= 1
    stack.operator.restart()
    deadline = time.monotonic() + AFTER_RESTART_S
    while time.monotonic() < deadline:
        assert stack.replicas(job) == 0
        assert not stack.pods(name), [p.metadata.name for p in stack.pods(name)]
        time.sleep(0.5)
    after = stack.job(name)
    assert (after.get("status") or {}).get("phase") == "Succeeded"
    assert (after.get("status") or {}).get("completionTime") == status["completionTime"]
    assert _runs(root) == runs_before, "a new training run started after the job had succeeded"
    assert stack.operator.alive()


def test_missing_data_is_rejected_and_checkpoints_kept(stack: Stack) -> None:
    name = "tiny-nodata"
    missing = "/assets/no-such-data.jsonl"
    manifest = stack.manifest(name, dataPath=missing)
    # Earlier work on the claim: a complete hf checkpoint and a full state.
    root = stack.node.claim_dir(stack.namespace, claim_name(parse_job(manifest)))
    (root / HF_FORMAT_DIR / "samples_8").mkdir(parents=True)
    (root / HF_FORMAT_DIR / "samples_8" / "config.json").write_text("{}")
    (root / HF_FORMAT_DIR / "samples_8" / "model.safetensors").write_bytes(b"weights")
    (root / "full_state" / "epoch_0").mkdir(parents=True)
    (root / "full_state" / "epoch_0" / "optimizer.bin").write_bytes(b"optimizer")
    before = _digest(root)

    stack.create_job(manifest)
    job = stack.follow(name)
    status = job.get("status") or {}
    assert status.get("phase") == "Failed", json.dumps(status, indent=1)
    failed = next((c for c in status.get("conditions", []) if c["type"] == "Failed"), None)
    assert failed is not None and failed["status"] == "True", status.get("conditions")
    assert failed["reason"] == "ConfigRejected", failed
    message = failed.get("message") or ""
    assert "spec.dataPath (trainingArgs.data_path)" in message, message  # the field the user wrote
    assert missing in message, message

    wait_until("the StatefulSet scaled to 0", lambda: stack.replicas(job) == 0, timeout_s=30)
    wait_until("the job's pods to be gone", lambda: not stack.pods(name), timeout_s=60, interval_s=0.5)
    events = stack.events(name)
    assert any(e.reason == "Failed" and e.type == "Warning" for e in events), [(e.reason, e.message) for e in events]
    assert _digest(root) == before, "the rejected job changed the files on its claim"


@pytest.mark.timeout(700)  # on 2 busy cores the pods take minutes to reach their first step
def test_suspended_job_status_lists_the_checkpoint_saved_on_sigterm(stack: Stack) -> None:
    """Issue 15, finding 7: suspending deletes the pods; each trainer saves an on-demand full
    state on SIGTERM, and pod 0's reporter publishes it before it exits, so the Suspended job's
    status names the state it will resume from, not an older one."""
    from sft_operator.checkpoints import scan_checkpoints

    name = "tiny-suspend"
    job = stack.create_job(stack.manifest(name, numEpochs=30))  # long enough to interrupt
    wait_until("the job training with a step logged", lambda: (
        ((stack.job(name).get("status") or {}).get("progress") or {}).get("stage") == "Training"
        and ((stack.job(name).get("status") or {}).get("progress") or {}).get("samplesSeen", 0) > 0),
        timeout_s=3 * JOB_TIMEOUT_S, interval_s=0.5)
    stack.custom.patch_namespaced_custom_object(contract.GROUP, contract.VERSION, stack.namespace,
                                                contract.PLURAL, name, {"spec": {"suspend": True}})
    wait_until("the job's pods to be gone", lambda: not stack.pods(name), timeout_s=120, interval_s=0.5)

    saved = scan_checkpoints(stack.claim_dir(job)).latest_full_state
    assert saved is not None and saved.metadata is not None and saved.metadata.mid_epoch, saved
    expected = {"name": saved.name, "samples": saved.metadata.samples_seen, "midEpoch": True}

    def shown() -> dict[str, Any]:
        status = stack.job(name).get("status") or {}
        state = (status.get("progress") or {}).get("latestFullState") or {}
        return {"phase": status.get("phase"), **{key: state.get(key) for key in expected}}

    try:
        wait_until("the status to show the on-demand state", lambda: shown() == {"phase": "Suspended",
                                                                                 **expected},
                   timeout_s=15, interval_s=0.5)
    except Exception:
        raise AssertionError(f"status shows {shown()}, the volume has {expected}") from None
