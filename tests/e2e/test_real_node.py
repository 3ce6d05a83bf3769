"""The path every user takes, on a REAL node (devtools.node: dockerd, kubelet 1.20 with
dockershim, kube-proxy, CNI, dev DNS): both images built by scripts/build-images.sh, `helm install`
of charts/sft-operator (the operator runs as a pod from sft-operator:dev with only the chart's RBAC
and its ServiceAccount token, reaching the API through the `kubernetes` Service), then ONE tiny CPU
job in sft-trainer:cpu-dev with the reporter sidecar, to Succeeded. `kubectl logs` of pod 0 works;
runAsNonRoot and readOnlyRootFilesystem hold in the operator's pod (kubectl exec).

Needs root, Debian's docker.io (/usr/bin/docker, dockerd), containernetworking-plugins, the node
binaries (~/.cache/sft-operator/k8s-1.20.2-node/bin) and the pause image; it FAILS (not skips)
with a one-line reason when one is missing. Own control plane (advertising this machine's IP, claims
as host directories), own node, everything stopped afterwards. Slow on 2 cores: times are printed.
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from sft_operator import contract
from devtools.demo import demo_manifest, describe, follow_job
from devtools.node import DOCKER
from devtools.realstack import OPERATOR_NS, RealStack, open_to_pods
from devtools.stack import StackError
from devtools.tiny_model import build_tiny_assets
from sft_operator.models import parse_job
from sft_operator.render import statefulset_name

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

JOB_NS = "realnode-e2e"
JOB_TIMEOUT_S = 900.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealStack]:
    if os.geteuid() != 0:
        pytest.fail("the real-node e2e needs root (dockerd, kubelet, iptables)", pytrace=False)
    if not Path(DOCKER).is_file() or not shutil.which("dockerd"):
        pytest.fail(f"docker is not available ({DOCKER} / dockerd missing): apt-get install docker.io", pytrace=False)
    if not shutil.which("kubectl"):
        pytest.fail("kubectl is not in PATH", pytrace=False)
    stack = RealStack(tmp_path_factory.mktemp("realstack"), on_step=lambda msg: print(f"realstack: {msg}"))
    try:
        try:
            stack.start()
        except StackError as e:
            pytest.fail(f"real-node stack could not start: {e}", pytrace=False)
        yield stack
    finally:
        stack.stop()
        print("\nreal-node e2e times: " + ", ".join(f"{k} {v:.1f}s" for k, v in stack.times.items()))


def test_helm_operator_pod_runs_tiny_job_on_real_node(stack: RealStack, tmp_path: Path) -> None:
    core = kubernetes.client.CoreV1Api(stack.api_client())

    # runAsNonRoot / readOnlyRootFilesystem, checked inside the running operator container.
    uid = stack.kubectl("-n", OPERATOR_NS, "exec", stack.operator_pod, "--", "id", "-u")
    assert uid.returncode == 0 and uid.stdout.strip() == "65532", uid
    touch = stack.kubectl("-n", OPERATOR_NS, "exec", stack.operator_pod, "--", "python", "-c", "open('/sft-ro-test', 'w')")
    assert touch.returncode != 0 and "Read-only file system" in touch.stderr, touch
    assets_dir = tmp_path / "assets"
    build_tiny_assets(assets_dir)
    open_to_pods(assets_dir)  # read by the trainer's uid 65532 through a hostPath volume

    # ONE tiny CPU job, the demo's, in the trainer image with the reporter sidecar.
    core.create_namespace({"metadata": {"name": JOB_NS}})
    assert stack.cp is not None
    stack.cp.wait_for_default_service_account(JOB_NS)
    manifest = copy.deepcopy(demo_manifest(assets_dir))
    manifest["metadata"] = {"name": "tiny", "namespace": JOB_NS}
    manifest["spec"]["pod"]["image"] = stack.images["SFT_TRAINER_IMAGE"]
    # Two pods and their reporters on a 2-core node: request half a core each.
    manifest["spec"]["pod"]["resources"] = {"requests": {"cpu": "500m", "memory": "1Gi"}}
    pod0 = f"{statefulset_name(parse_job(manifest))}-0"
    kubernetes.client.CustomObjectsApi(stack.api_client()).create_namespaced_custom_object(
        contract.GROUP, contract.VERSION, JOB_NS, contract.PLURAL, manifest)
    t = time.monotonic()
    logs: dict[str, str] = {}

    def on_update(job: dict[str, Any]) -> None:
        print(f"{time.strftime('%H:%M:%S')} tiny: {describe(job)}")
        # While pod 0 exists: `kubectl logs` of its trainer (the pods go once the job is done).
        if "pod0_running" not in stack.times:
            try:
                if core.read_namespaced_pod(pod0, JOB_NS).status.phase == "Running":
                    stack.times["pod0_running"] = time.monotonic() - t
            except kubernetes.client.exceptions.ApiException:
                pass
        out = stack.kubectl("-n", JOB_NS, "logs", pod0, "-c", contract.TRAINER_CONTAINER, "--tail=20", timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            logs["trainer"] = out.stdout

    try:
        job = follow_job(stack.api_client(), JOB_NS, "tiny", JOB_TIMEOUT_S, on_update)
    except TimeoutError:
        print(stack.kubectl("-n", JOB_NS, "describe", "pods").stdout[-6000:])
        print(stack.operator_log())
        raise
    stack.times["job"] = time.monotonic() - t
    phase = (job.get("status") or {}).get("phase")
    if phase != "Succeeded":
        print(stack.operator_log())
    assert phase == "Succeeded", describe(job)
    # `kubectl logs` of pod 0 worked (the apiserver -> kubelet path): the trainer's own lines.
    if "trainer" not in logs:  # a very fast job: try once more, the pod may still be there
        out = stack.kubectl("-n", JOB_NS, "logs", pod0, "-c", contract.TRAINER_CONTAINER, "--tail=20", timeout=30)
        logs["trainer"] = out.stdout if out.returncode == 0 else ""
    assert logs.get("trainer", "").strip(), "kubectl logs of pod 0 never returned the trainer's output"
    print(f"--- kubectl logs {pod0} -c trainer (tail) ---\n{logs['trainer']}")
    sftjobs = stack.kubectl("-n", JOB_NS, "get", "sftjobs", timeout=30)
    print(sftjobs.stdout)
