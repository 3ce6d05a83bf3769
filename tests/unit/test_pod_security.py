"""Every pod the operator renders is restricted-profile (pss_restricted.py, the Pod Security
Standard's rules as the Kubernetes docs list them); the checker itself fails on pods that break
each rule; only the reporter holds an API credential."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pss_restricted import restricted_violations

from devtools.tiny_model import tiny_job_spec
from sft_core import contract
from sft_models import pod_security
from sft_models.models import parse_job
from sft_operator.render import render_children

USER_VOLUMES = {
    "volumes": [
        {"name": "data", "persistentVolumeClaim": {"claimName": "data", "readOnly": True}},
        {"name": "hf", "secret": {"secretName": "hf-token"}},
        {"name": "extra-config", "configMap": {"name": "extra"}},
        {
            "name": "scratch",
            "ephemeral": {
                "volumeClaimTemplate": {
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}}
                }
            },
        },
        {"name": "model", "csi": {"driver": "s3.csi.example", "readOnly": True}},
    ],
    "volumeMounts": [
        {"name": "data", "mountPath": "/data", "readOnly": True},
        {"name": "hf", "mountPath": "/var/run/hf", "readOnly": True},
        {"name": "extra-config", "mountPath": "/etc/extra"},
        {"name": "scratch", "mountPath": "/scratch"},
        {"name": "model", "mountPath": "/models", "readOnly": True},
    ],
    "env": [{"name": "HF_TOKEN_PATH", "value": "/var/run/hf/token"}],
    "annotations": {"container.apparmor.security.beta.kubernetes.io/trainer": "runtime/default"},
    "serviceAccountName": "trainer",
    "fsGroup": 2000,
}
SPECS: dict[str, dict[str, Any]] = {
    "cpu": {},
    "cuda": {"device": "cuda", "nprocPerNode": 8, "effectiveBatchSize": 64, "checkpoints": {"existingClaim": "shared"}},
    "gang-coscheduling": {"scheduling": {"gang": {"provider": "coscheduling"}}},
    "gang-volcano-queued": {"scheduling": {"gang": {"provider": "volcano"}, "queueName": "team-a"}},
    "user-volumes": {"pod": USER_VOLUMES},
    "suspended": {"suspend": True},
    "remote-sources-and-export": {
        "modelPath": "hf://org/model@main",
        "dataPath": "s3://bkt/train.jsonl",
        "remote": {
            "huggingFace": {"tokenSecret": "hf-token"},
            "s3": {"credentialsSecret": "s3-creds"},
            "cacheClaim": "hub-cache",
        },
        "export": {"uri": "s3://out/runs", "fullStates": True, "restore": True},
    },
}


def job(**spec: Any) -> Any:
    body = tiny_job_spec(**{"checkpoints": {"claim": {"size": "1Gi"}}, **spec})
    return parse_job({"metadata": {"name": "tiny", "namespace": "ns", "uid": "uid-1"}, "spec": body})


def pod_templates(rendered_job: Any) -> list[dict[str, Any]]:
    """Every pod template among the job's children (any kind that has one)."""
    return [
        child["spec"]["template"] for child in render_children(rendered_job) if "template" in (child.get("spec") or {})
    ]


@pytest.mark.parametrize("name", SPECS)
def test_every_rendered_pod_is_restricted(name: str) -> None:
    templates = pod_templates(job(**SPECS[name]))
    assert len(templates) == 1  # the StatefulSet's
    assert restricted_violations(templates[0]) == []


def good_pod() -> dict[str, Any]:
    return copy.deepcopy(pod_templates(job(pod=USER_VOLUMES))[0])


def trainer(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["spec"]["containers"][0]


BREAKS: dict[str, tuple[Any, list[str]]] = {
    "hostPath volume": (
        lambda p: p["spec"]["volumes"].append({"name": "host", "hostPath": {"path": "/"}}),
        ["spec.volumes[10].hostPath: volume type not allowed"],
    ),
    "nfs volume": (
        lambda p: p["spec"]["volumes"].append({"name": "n", "nfs": {"server": "s", "path": "/"}}),
        ["spec.volumes[10].nfs: volume type not allowed"],
    ),
    "host namespaces": (
        lambda p: p["spec"].update(hostNetwork=True, hostPID=True, hostIPC=True),
        [
            "spec.hostNetwork: host namespaces are not allowed",
            "spec.hostPID: host namespaces are not allowed",
            "spec.hostIPC: host namespaces are not allowed",
        ],
    ),
    "host port": (
        lambda p: trainer(p)["ports"][0].update(hostPort=29500),
        ["spec.containers[0].ports[0].hostPort: host ports are not allowed"],
    ),
    "privileged": (
        lambda p: trainer(p)["securityContext"].update(privileged=True),
        ["spec.containers[0].securityContext.privileged: must be unset or false"],
    ),
    "privilege escalation": (
        lambda p: trainer(p)["securityContext"].pop("allowPrivilegeEscalation"),
        ["spec.containers[0].securityContext.allowPrivilegeEscalation: must be false"],
    ),
    "capabilities": (
        lambda p: trainer(p)["securityContext"].update(capabilities={"add": ["NET_BIND_SERVICE", "SYS_ADMIN"]}),
        [
            "spec.containers[0].securityContext.capabilities.drop: must include ALL",
            "spec.containers[0].securityContext.capabilities.add[1]: SYS_ADMIN may not be added",
        ],
    ),
    "root user": (
        lambda p: (p["spec"]["securityContext"].update(runAsUser=0), trainer(p)["securityContext"].update(runAsUser=0)),
        [
            "spec.securityContext.runAsUser: must not be 0",
            "spec.containers[0].securityContext.runAsUser: must not be 0",
        ],
    ),
    "runAsNonRoot unset": (
        lambda p: (
            p["spec"]["securityContext"].pop("runAsNonRoot"),
            [c["securityContext"].pop("runAsNonRoot") for c in p["spec"]["containers"]],
        ),
        [
            "spec.containers[0].securityContext.runAsNonRoot: must be true (here or in the pod's securityContext)",
            "spec.containers[1].securityContext.runAsNonRoot: must be true (here or in the pod's securityContext)",
        ],
    ),
    "container runs as root though the pod says non-root": (
        lambda p: trainer(p)["securityContext"].update(runAsNonRoot=False),
        ["spec.containers[0].securityContext.runAsNonRoot: must be true (here or in the pod's securityContext)"],
    ),
    "seccomp unconfined": (
        lambda p: trainer(p)["securityContext"].update(seccompProfile={"type": "Unconfined"}),
        ["spec.containers[0].securityContext.seccompProfile.type: Unconfined is not allowed"],
    ),
    "seccomp unset": (
        lambda p: (
            p["spec"]["securityContext"].pop("seccompProfile"),
            trainer(p)["securityContext"].pop("seccompProfile"),
        ),
        [
            "spec.containers[0].securityContext.seccompProfile.type: must be RuntimeDefault or Localhost "
            "(here or in the pod's securityContext)"
        ],
    ),
    "procMount": (
        lambda p: trainer(p)["securityContext"].update(procMount="Unmasked"),
        ["spec.containers[0].securityContext.procMount: must be unset or Default"],
    ),
    "unsafe sysctl": (
        lambda p: p["spec"]["securityContext"].update(
            sysctls=[{"name": "net.ipv4.tcp_syncookies", "value": "1"}, {"name": "kernel.msgmax", "value": "1"}]
        ),
        ["spec.securityContext.sysctls[1].name: kernel.msgmax is not a safe sysctl"],
    ),
    "AppArmor": (
        lambda p: (
            p["metadata"]["annotations"].update(
                {"container.apparmor.security.beta.kubernetes.io/reporter": "unconfined"}
            ),
            trainer(p)["securityContext"].update(appArmorProfile={"type": "Unconfined"}),
        ),
        [
            "metadata.annotations[container.apparmor.security.beta.kubernetes.io/reporter]: AppArmor profile "
            "'unconfined' is not allowed",
            "spec.containers[0].securityContext.appArmorProfile.type: Unconfined is not allowed",
        ],
    ),
    "SELinux": (
        lambda p: p["spec"]["securityContext"].update(seLinuxOptions={"type": "spc_t", "user": "root"}),
        [
            "spec.securityContext.seLinuxOptions.type: spc_t is not allowed",
            "spec.securityContext.seLinuxOptions.user: must be unset",
        ],
    ),
    "hostProcess": (
        lambda p: p["spec"]["securityContext"].update(windowsOptions={"hostProcess": True}),
        ["spec.securityContext.windowsOptions.hostProcess: must be unset or false"],
    ),
    "init container without a securityContext": (
        lambda p: p["spec"].update(initContainers=[{"name": "init", "image": "x"}]),
        [
            "spec.initContainers[0].securityContext.allowPrivilegeEscalation: must be false",
            "spec.initContainers[0].securityContext.capabilities.drop: must include ALL",
        ],
    ),
}


@pytest.mark.parametrize("name", BREAKS)
def test_checker_reports_each_broken_rule_by_path(name: str) -> None:
    pod = good_pod()
    breaking, expected = BREAKS[name]
    breaking(pod)
    assert restricted_violations(pod) == expected


def test_only_the_reporter_holds_a_token() -> None:
    pod = pod_templates(job())[0]["spec"]
    assert pod["automountServiceAccountToken"] is False
    token_volumes = [
        v["name"]
        for v in pod["volumes"]
        if any("serviceAccountToken" in source for source in (v.get("projected") or {}).get("sources", []))
    ]
    assert token_volumes == [pod_security.REPORTER_TOKEN_VOLUME]
    mounted = {
        c["name"]: [m["mountPath"] for m in c["volumeMounts"] if m["name"] in token_volumes] for c in pod["containers"]
    }
    assert mounted == {contract.TRAINER_CONTAINER: [], "reporter": ["/var/run/secrets/kubernetes.io/serviceaccount"]}


def test_only_the_transfer_sidecar_sees_the_credentials() -> None:
    pod = pod_templates(job(**SPECS["remote-sources-and-export"]))[0]["spec"]
    secrets = {
        c["name"]: sorted(
            {
                (e["valueFrom"]["secretKeyRef"]["name"], e["name"])
                for e in c.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})
            }
        )
        for c in pod["containers"]
    }
    assert secrets == {
        contract.TRAINER_CONTAINER: [],
        "reporter": [],
        contract.TRANSFER_CONTAINER: [
            ("hf-token", "HF_TOKEN"),
            ("s3-creds", "AWS_ACCESS_KEY_ID"),
            ("s3-creds", "AWS_ENDPOINT_URL"),
            ("s3-creds", "AWS_REGION"),
            ("s3-creds", "AWS_SECRET_ACCESS_KEY"),
            ("s3-creds", "AWS_SESSION_TOKEN"),
        ],
    }
    assert not any("envFrom" in c for c in pod["containers"])
