"""Admission webhook benchmark: what the operator's validating webhook adds to creating an SFTJob,
on the real local control plane (the operator as a local process, its webhook called by URL).

    PYTHONPATH=. .venv/bin/python benchmarks/admission.py [--jobs 100]

Four rounds of --jobs creates each, one at a time, as user bob (impersonated; may create
SFTJobs, pods and claims), timed from the call to its return: without the webhook, with it
(admitted: the models, the policy and one LocalSubjectAccessReview per permission; the operator
reconciles each job meanwhile, as in the first round), admitted as server-side dry runs (nothing
stored, so nothing to reconcile), and refused for alice (may not create pods; dry runs). Prints each round's p50,
p95 and max, and the operator's CPU per admitted create (from /proc: the round with the webhook
minus the round without, both reconciling the same number of jobs) and per review alone (the
admitted dry runs, which store nothing).
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from devtools.controlplane import ControlPlane, free_port
from devtools.pki import make_ca, make_serving_cert
from devtools.stack import OperatorProcess, install_crd, wait_until
from sft_core import contract
from sft_operator import admission

NAMESPACE = "bench-admission"
CONFIGURATION = "sft-admission-benchmark"


def job_body(name: str) -> dict[str, Any]:
    return {
        "apiVersion": contract.API_VERSION,
        "kind": contract.KIND,
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "modelPath": "m",
            "dataPath": "/data/train.jsonl",
            "numEpochs": 1,
            "effectiveBatchSize": 2,
            "learningRate": 1e-5,
            "maxSeqLen": 64,
            "device": "cpu",
            "checkpoints": {"existingClaim": "checkpoints"},
        },
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its waited-for children (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def grant(api: Any) -> None:
    rbac = kubernetes.client.RbacAuthorizationV1Api(api)
    rules = {
        "sftjobs": [{"apiGroups": [contract.GROUP], "resources": [contract.PLURAL], "verbs": ["create"]}],
        "pods": [{"apiGroups": [""], "resources": ["pods", "persistentvolumeclaims"], "verbs": ["create"]}],
    }
    for name, role_rules in rules.items():
        rbac.create_namespaced_role(NAMESPACE, {"metadata": {"name": name}, "rules": role_rules})
    for user, roles in (("alice", ["sftjobs"]), ("bob", ["sftjobs", "pods"])):
        for role in roles:
            rbac.create_namespaced_role_binding(
                NAMESPACE,
                {
                    "metadata": {"name": f"{user}-{role}"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
                    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
                },
            )


def timed_creates(client: Any, prefix: str, jobs: int, dry_run: bool = False, refused: bool = False) -> list[float]:
    custom = kubernetes.client.CustomObjectsApi(client)
    times = []
    for i in range(jobs):
        t = time.perf_counter()
        try:
            custom.create_namespaced_custom_object(
                contract.GROUP,
                contract.VERSION,
                NAMESPACE,
                contract.PLURAL,
                job_body(f"{prefix}-{i}"),
                dry_run="All" if dry_run else None,
            )
            assert not refused, "admitted where it should have been refused"
        except ApiException as exc:
            if not refused or exc.status != 403:
                raise
        times.append(time.perf_counter() - t)
    return times


def summary(what: str, times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
    return f"{what:<44} p50 {statistics.median(ms):6.1f} ms   p95 {p95:6.1f} ms   max {ms[-1]:6.1f} ms   (n={len(ms)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100)
    args = parser.parse_args(argv)
    with ControlPlane() as cp, tempfile.TemporaryDirectory() as tmp:
        api = cp.api_client()
        install_crd(api)
        kubernetes.client.CoreV1Api(api).create_namespace({"metadata": {"name": NAMESPACE}})
        grant(api)
        ca = make_ca("sft-admission-benchmark")
        pair = make_serving_cert(ca, ip_addresses=("127.0.0.1",), dns_names=("localhost",), common_name="sft-webhook")
        cert_dir = Path(tmp) / "webhook"
        cert_dir.mkdir()
        (cert_dir / "tls.crt").write_bytes(pair.cert_pem)
        (cert_dir / "tls.key").write_bytes(pair.key_pem)
        port = free_port()
        operator = OperatorProcess(
            cp.kubeconfig,
            [NAMESPACE],
            Path(tmp) / "operator.log",
            ["--webhook-port", str(port), "--webhook-cert-dir", str(cert_dir), "--metrics-port", "0"],
        )
        operator.start()
        assert operator.proc is not None
        bob, alice = cp.api_client(), cp.api_client()
        bob.set_default_header("Impersonate-User", "bob")
        alice.set_default_header("Impersonate-User", "alice")
        try:
            cpu = cpu_seconds(operator.proc.pid)
            without = timed_creates(bob, "plain", args.jobs)
            cpu_without = cpu_seconds(operator.proc.pid) - cpu
            kubernetes.client.AdmissionregistrationV1Api(api).create_validating_webhook_configuration(
                {
                    "metadata": {"name": CONFIGURATION},
                    "webhooks": [
                        {
                            "name": "validate.sftjobs.finetune.dev",
                            "admissionReviewVersions": ["v1"],
                            "sideEffects": "None",
                            "failurePolicy": "Fail",
                            "timeoutSeconds": 10,
                            "clientConfig": {
                                "url": f"https://127.0.0.1:{port}/{admission.WEBHOOK_ID}",
                                "caBundle": base64.b64encode(ca.cert_pem).decode(),
                            },
                            "rules": [
                                {
                                    "apiGroups": [contract.GROUP],
                                    "apiVersions": [contract.VERSION],
                                    "operations": ["CREATE", "UPDATE"],
                                    "resources": [contract.PLURAL],
                                }
                            ],
                        }
                    ],
                }
            )
            # The configuration takes effect once the API server's informer has it: a refusal says so.
            wait_until("the webhook in effect", lambda: _refused(alice), timeout_s=30, interval_s=0.2)
            cpu = cpu_seconds(operator.proc.pid)
            admitted = timed_creates(bob, "hooked", args.jobs)
            cpu_with = cpu_seconds(operator.proc.pid) - cpu
            cpu = cpu_seconds(operator.proc.pid)
            admitted_dry = timed_creates(bob, "dry", args.jobs, dry_run=True)
            cpu_review = cpu_seconds(operator.proc.pid) - cpu
            refused = timed_creates(alice, "refused", args.jobs, dry_run=True, refused=True)
            print(summary("create, no webhook", without))
            print(summary("create, webhook admits (1 review per create)", admitted))
            print(summary("create admitted, dry run (nothing reconciled)", admitted_dry))
            print(summary("create refused by the webhook (dry run)", refused))
            print(
                f"added p50: {1000 * (statistics.median(admitted) - statistics.median(without)):.1f} ms per create; "
                f"operator CPU per admitted create: {1000 * (cpu_with - cpu_without) / args.jobs:.1f} ms "
                f"({cpu_with:.2f} s with the webhook, {cpu_without:.2f} s without, both reconciling the jobs); "
                f"operator CPU per review alone (the dry runs): {1000 * cpu_review / args.jobs:.1f} ms"
            )
        finally:
            operator.stop()
    return 0


def _refused(alice: Any) -> bool:
    try:
        timed_creates(alice, "probe", 1, dry_run=True, refused=True)
    except AssertionError:
        return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())
