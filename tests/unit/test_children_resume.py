"""children.converge on a resume (an operator restart): the children come from what the watches
hold (child_summary) and one listing per namespace and kind of the unwatched ones, not from a read
per child; a child that differs is read before it is replaced, a missing one is created."""

from __future__ import annotations

import copy
import json
from collections import Counter
from typing import Any

import kubernetes
from fake_kube import FakeKube

from devtools.tiny_model import tiny_job_spec
from sft_core import contract
from sft_models.models import parse_job
from sft_operator import render, render_meta, render_pod
from sft_operator.children import KnownChildren, child_summary, converge
from sft_operator.kube import Kube

WATCHED = frozenset({"StatefulSet", "ConfigMap"})


def job(name: str = "r") -> Any:
    spec = tiny_job_spec(checkpoints={"existingClaim": "shared"})
    return parse_job({"metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}"}, "spec": spec})


def as_stored(manifest: dict[str, Any]) -> dict[str, Any]:
    """A child as the API server returns it: what we sent, plus server-set fields."""
    stored = copy.deepcopy(manifest)
    stored["metadata"].update(
        resourceVersion="7",
        uid=f"uid-{manifest['kind']}-{manifest['metadata']['name']}",
        managedFields=[{"manager": "sft-operator"}],
    )
    if manifest["kind"] == "StatefulSet":
        stored["status"] = {"replicas": 1}
    return stored


class RecordingKube(FakeKube):
    """The calls converge makes, by (verb, kind); reads answer from ``stored``."""

    def __init__(self, stored: dict[tuple[str, str], dict[str, Any]]):
        self.stored = stored
        self.calls: Counter[tuple[str, str]] = Counter()
        self.replaced: list[dict[str, Any]] = []

    def read(self, kind: str, namespace: str, name: str, api_version: str | None = None) -> dict[str, Any] | None:
        self.calls[("get", kind)] += 1
        return copy.deepcopy(self.stored.get((kind, name)))

    def read_claim(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls[("get", "claim")] += 1
        return {"metadata": {"name": name}, "spec": {"accessModes": ["ReadWriteMany"]}, "status": {"phase": "Bound"}}

    def listed(self, kind: str, namespace: str) -> dict[str, dict[str, Any]]:
        self.calls[("list", kind)] += 1
        return {name: copy.deepcopy(obj) for (k, name), obj in self.stored.items() if k == kind}

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.calls[("create", manifest["kind"])] += 1
        return as_stored(manifest)

    def replace(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.calls[("replace", manifest["kind"])] += 1
        self.replaced.append(manifest)
        return manifest


def cluster_with(children: list[dict[str, Any]]) -> tuple[dict[tuple[str, str], dict[str, Any]], KnownChildren]:
    stored = {(m["kind"], m["metadata"]["name"]): as_stored(m) for m in children}
    watched = {key: child_summary(obj) for key, obj in stored.items() if key[0] in WATCHED}
    return stored, KnownChildren(WATCHED, watched)


def test_a_resume_of_an_unchanged_job_reads_and_writes_nothing() -> None:
    sft_job = job()
    stored, known = cluster_with(render.render_children(sft_job))
    kube = RecordingKube(stored)
    done = converge(kube, sft_job, None, fresh=False, reporter_image=render_meta.DEFAULT_REPORTER_IMAGE, known=known)
    assert done.problem is None
    assert done.statefulset is not None and done.statefulset["spec"] == {"replicas": sft_job.spec.nnodes}
    # One listing per unwatched kind (the Kube caches it for every job of the namespace), the
    # shared claim's cached read; nothing else.
    assert kube.calls == Counter(
        {
            ("list", "ServiceAccount"): 1,
            ("list", "Role"): 1,
            ("list", "RoleBinding"): 1,
            ("list", "Service"): 1,
            ("list", "NetworkPolicy"): 1,
            ("get", "claim"): 1,
        }
    )


def test_a_resume_without_known_children_reads_each() -> None:
    sft_job = job()
    stored, _ = cluster_with(render.render_children(sft_job))
    kube = RecordingKube(stored)
    converge(kube, sft_job, None, fresh=False, reporter_image=render_meta.DEFAULT_REPORTER_IMAGE)
    # What a restart cost before: a read per child (two ConfigMaps), nothing written.
    assert kube.calls == Counter(
        {
            ("get", kind): 1
            for kind in ("Role", "RoleBinding", "Service", "NetworkPolicy", "ServiceAccount", "StatefulSet", "claim")
        }
        | {("get", "ConfigMap"): 2}
    )


def test_a_missing_child_is_created_and_a_changed_one_read_before_it_is_replaced() -> None:
    sft_job = job()
    children = render.render_children(sft_job)
    stored, known = cluster_with([m for m in children if m["kind"] not in ("Service", "Role")])
    config_name = render.render_configmap(sft_job)["metadata"]["name"]
    # The index's version of the config (someone edited it; the watch delivered it) and the
    # API server's now (a later version): the replace must carry the latest.
    stored[("ConfigMap", config_name)]["data"] = {"training.json": "{}"}
    stored[("ConfigMap", config_name)]["metadata"]["resourceVersion"] = "9"
    known.objects[("ConfigMap", config_name)]["data"] = {"training.json": "{}"}
    kube = RecordingKube(stored)
    converge(kube, sft_job, None, fresh=False, reporter_image=render_meta.DEFAULT_REPORTER_IMAGE, known=known)
    assert kube.calls[("create", "Service")] == 1 and kube.calls[("create", "Role")] == 1
    assert kube.calls[("get", "ConfigMap")] == 1 and kube.calls[("replace", "ConfigMap")] == 1
    (replaced,) = kube.replaced
    assert replaced["metadata"]["resourceVersion"] == "9"
    assert replaced["data"] == render.render_configmap(sft_job)["data"]
    assert replaced["metadata"]["managedFields"] == [{"manager": "sft-operator"}]  # the whole object, not a summary
    assert sum(n for (verb, kind), n in kube.calls.items() if verb in ("create", "replace")) == 3


def test_a_network_policy_someone_widened_is_restored_and_a_deleted_one_re_created() -> None:
    """The NetworkPolicy is compared whole: an added rule would let more than the job in."""
    sft_job = job()
    policy = render.render_networkpolicy(sft_job)
    stored, known = cluster_with(render.render_children(sft_job))
    widened = stored[("NetworkPolicy", policy["metadata"]["name"])]
    widened["spec"]["ingress"].append({"from": [{"namespaceSelector": {}}]})
    kube = RecordingKube(stored)
    converge(kube, sft_job, None, fresh=False, reporter_image=render_meta.DEFAULT_REPORTER_IMAGE, known=known)
    (replaced,) = kube.replaced
    assert (replaced["kind"], replaced["spec"]) == ("NetworkPolicy", policy["spec"])
    assert replaced["metadata"]["resourceVersion"] == "7"  # the object read, updated
    del stored[("NetworkPolicy", policy["metadata"]["name"])]
    kube = RecordingKube(stored)
    converge(kube, sft_job, None, fresh=False, reporter_image=render_meta.DEFAULT_REPORTER_IMAGE, known=known)
    assert kube.calls[("create", "NetworkPolicy")] == 1 and not kube.replaced


def test_a_network_policy_is_written_to_its_plural() -> None:
    """Kube._write names the resource by render_meta.resource_plural (not the kind plus "s")."""
    paths: list[tuple[str, str]] = []

    class Client(kubernetes.client.ApiClient):
        def param_serialize(self, method: str, resource_path: str, **_: Any) -> Any:  # type: ignore[override]  # records only the path
            paths.append((method, resource_path))
            raise RuntimeError("not sent")

    kube = Kube(Client(kubernetes.client.Configuration()))
    policy = render.render_networkpolicy(job())
    for call in (kube.create, kube.replace):
        try:
            call(policy)
        except RuntimeError:
            pass
    assert paths == [
        ("POST", "/apis/networking.k8s.io/v1/namespaces/ns/networkpolicies"),
        ("PUT", "/apis/networking.k8s.io/v1/namespaces/ns/networkpolicies/r"),
    ]


def test_child_summary_keeps_what_converging_and_the_status_compare() -> None:
    sts = as_stored(render_pod.render_statefulset(job()))
    summary = child_summary(sts)
    assert summary["kind"] == "StatefulSet" and summary["spec"] == {"replicas": sts["spec"]["replicas"]}
    assert summary["metadata"]["annotations"] == sts["metadata"]["annotations"]
    assert summary["metadata"]["ownerReferences"] == sts["metadata"]["ownerReferences"]
    assert "managedFields" not in summary["metadata"] and "status" not in summary
    progress = as_stored(render.render_progress_configmap(job()))
    progress["data"] = {contract.PROGRESS_KEY: "x" * 1000}  # the reporter's, never compared
    assert "data" not in child_summary(progress)
    role = as_stored(render.render_reporter_role(job()))
    assert child_summary(role)["rules"] == role["rules"]


class ListingKube(Kube):
    """A Kube whose LIST answers come from here (the API client is never called)."""

    def __init__(self) -> None:
        super().__init__(kubernetes.client.ApiClient(kubernetes.client.Configuration()))
        self.lists: list[tuple[str, str, str]] = []

    def _list_call(self, kind: str) -> Any:
        def call(namespace: str, *, label_selector: str, _preload_content: bool) -> Any:
            self.lists.append((kind, namespace, label_selector))
            items = [{"metadata": {"name": f"job-{i}", "namespace": namespace}} for i in range(3)]

            class Answer:
                data = json.dumps({"apiVersion": "v1", "kind": f"{kind}List", "items": items}).encode()

            return Answer()

        return call


def test_a_listing_serves_every_job_of_the_namespace_for_a_while(monkeypatch: Any) -> None:
    kube = ListingKube()
    clock = [100.0]
    monkeypatch.setattr("sft_operator.kube.time.monotonic", lambda: clock[0])
    first = kube.listed("ServiceAccount", "ns")
    assert first["job-1"] == {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "job-1", "namespace": "ns"},
    }
    clock[0] += 5.0
    assert kube.listed("ServiceAccount", "ns") is first
    kube.listed("ServiceAccount", "other")
    kube.listed("Role", "ns")
    clock[0] += 6.0  # past LISTING_TTL_S since the first listing
    kube.listed("ServiceAccount", "ns")
    selector = f"{contract.LABEL_MANAGED_BY}={contract.MANAGED_BY}"
    assert kube.lists == [
        ("ServiceAccount", "ns", selector),
        ("ServiceAccount", "other", selector),
        ("Role", "ns", selector),
        ("ServiceAccount", "ns", selector),
    ]
