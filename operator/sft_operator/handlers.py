"""kopf wiring: what the operator watches and which module answers each event.

Decisions live in pure modules (models: validation; render: manifests and immutability; status:
phase and conditions); the API work in children.py (converge the children) and publishing.py
(patch the status, post Events), both through the adapter (kube.py). Beside it: what kopf's
indexes keep (indexes.py), kopf's lean annotation storages (kopf_storage.py), the run-policy
clock (policy_clock.py), the webhook (webhook.py) and the start-up (operator_main.py: `run`). Here:

- create/resume/update of an SFTJob: converge its children, then publish its status;
- an event of a child (pods, StatefulSets, progress ConfigMaps; kopf indexes by label): re-derive
  the job's status from the indexes, no API reads; a deleted child is re-created;
- an operator restart resumes every job from the indexes (and one listing per namespace of the
  kinds not indexed): no read per job, no write unless something differs;
- once training is over, the StatefulSet is scaled to 0 for good.

The operator never writes spec. kopf's annotations and finalizer use our group's prefix; no
finalizer is needed (children go by owner reference), so deleting a job never waits for us.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

import kopf
import kubernetes

from sft_core import contract
from sft_models.models import InvalidSpecError, Phase, Reason, SFTJobStatus
from sft_operator import admission, kubeclient, metrics, policy_clock, render_meta
from sft_operator import indexes as projections  # `indexes`: each handler's view of them (Indexes)
from sft_operator.children import converge
from sft_operator.indexes import Indexes, index_entry
from sft_operator.kopf_storage import LeanDiffBaseStorage, LeanProgressStorage
from sft_operator.kube import Kube
from sft_operator.pod_facts import last_trainer_termination
from sft_operator.policy import AdmissionPolicy, PolicyViolation, parse_admitted_job
from sft_operator.publishing import (
    JobStatusBook,
    Key,
    check_spec,
    now,
    update_status,
    warn_dropped_progress,
)
from sft_operator.run_policies import (
    RunPolicy,
    finished_for_longer_than,
    group_restart_plan,
    held_back,
    stall_restart_plan,
    stalled,
)
from sft_operator.spec_checks import SpecProblem
from sft_operator.webhook import JobValidator

JOB = (contract.GROUP, contract.VERSION, contract.PLURAL)
OUR_CHILDREN: dict[str, Any] = {contract.LABEL_MANAGED_BY: contract.MANAGED_BY, contract.LABEL_JOB_NAME: kopf.PRESENT}
PROGRESS: dict[str, Any] = {**OUR_CHILDREN, contract.LABEL_COMPONENT: render_meta.COMPONENT_PROGRESS}
log = logging.getLogger("sft_operator")
CONSISTENCY_TIMEOUT_S = 120.0
HANDLER_THREADS = 24
# Ranks restarted with a failed or stalled peer cannot save (a collective save needs every rank):
# no point waiting the pods' full grace period.
GROUP_RESTART_GRACE_S = 30

# What `run` was told, set once before kopf starts (wire, below): kopf calls the handlers below as plain
# functions with its own arguments, so this is how they reach it (the webhook's handler is an
# object of its own, JobValidator).
_api_client: kubernetes.client.ApiClient | None = None
# The reporter sidecar's image: the operator's own (set by `run`, from SFT_REPORTER_IMAGE).
_reporter_image: str = render_meta.DEFAULT_REPORTER_IMAGE
# The admin policy (chart values `policy`, SFT_ADMISSION_POLICY): set by `run`, enforced by the
# webhook and again at every reconcile.
_policy: AdmissionPolicy = AdmissionPolicy()
# The validating webhook's HTTPS server (`run --webhook-port`), for kopf's settings.
_webhook_server: kopf.WebhookServer | None = None


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = f"{contract.GROUP}/finalizer"
    settings.persistence.progress_storage = LeanProgressStorage(prefix=contract.GROUP)
    # Labels and annotations do not matter to a job: a change to them is no reason to write.
    settings.persistence.diffbase_storage = LeanDiffBaseStorage(
        prefix=contract.GROUP, ignored_fields=["metadata.labels", "metadata.annotations"]
    )
    # Only warnings from kopf itself become Events; ours are posted explicitly.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    # After storing "handled" on a job, kopf waits for that version before it looks at the job
    # again; past this timeout it takes the versions in between (our status patch, written
    # before kopf's annotation) for unhandled changes and runs the creation handler a second
    # time. The default 5 s was exceeded for about a quarter of 100 jobs created at once on
    # 2 cores (409s on every child, a GET each). Normally the version arrives in milliseconds.
    settings.persistence.consistency_timeout = CONSISTENCY_TIMEOUT_S
    # Handlers are synchronous and spend their time waiting on the API server (a job's creation
    # is eight requests, in three rounds: children.converge): more threads than kopf's default
    # (CPUs + 4) keep a burst of jobs moving. Handlers that could only return at once (an event of
    # a job, a Service's, a ConfigMap's other than a deletion or a progress summary) are filtered
    # out with `when` in kopf's loop: a thread hop costs more CPU than most of them would.
    settings.execution.max_workers = HANDLER_THREADS
    # Batching: kopf's defaults, measured with benchmarks/scale.py. Within batch_window (0.1 s)
    # an object's events are folded into one handler run (a StatefulSet's burst of status
    # updates: one status derivation); a longer window would only delay every status by as much.
    # idle_timeout (5 s) bounds how long an object's idle worker task is kept.
    # The operator watches exactly its resources (and the namespaces it was given): no CRD or
    # namespace scanning, which would need cluster-wide list/watch rights it has no use for.
    settings.scanning.disabled = True
    # The webhook: served by every replica, leader or not (kopf's admission server does not pause
    # with peering); the chart's ValidatingWebhookConfiguration calls it, kopf manages none.
    settings.admission.server = _webhook_server
    memo.kube = Kube(_api_client or kubeclient.BoundedApiClient())
    memo.jobs = JobStatusBook()


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """kopf connects with the same credentials as our client (--kubeconfig, in-cluster, ...)."""
    cfg = (_api_client or kubeclient.BoundedApiClient()).configuration
    # The client keeps the token as "BearerToken" (newer) or "authorization" (older); the
    # getter also runs the in-cluster token refresh hook.
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization") or ""
    scheme, _sep, token = header.partition(" ") if " " in header else ("Bearer" if header else "", "", header)
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        username=cfg.username or None,
        password=cfg.password or None,
        scheme=scheme or None,
        token=token or None,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
    )


# kopf's indexes: what each keeps per job is indexes.py's; a handler finds each among its
# arguments by the projection's name (Indexes.of).
kopf.index(*JOB)(projections.jobs_by_name)
kopf.index("pods", labels=OUR_CHILDREN)(projections.pods_by_job)
kopf.index("configmaps", labels=PROGRESS)(projections.progress_by_job)
kopf.index("apps", "v1", "statefulsets", labels=OUR_CHILDREN)(projections.statefulsets_by_job)
kopf.index("configmaps", labels=OUR_CHILDREN)(projections.children_by_job)


def scale_down_if_over(
    memo: kopf.Memo, body: dict[str, Any], status: SFTJobStatus, statefulset: dict[str, Any] | None
) -> None:
    """Training is over (Succeeded, or Failed by training): scale the StatefulSet to 0 for good.
    The checkpoints stay; the status, now persisted, keeps it at 0 across operator restarts."""
    if not status.training_over or statefulset is None or (statefulset.get("spec") or {}).get("replicas") == 0:
        return
    job, problem = check_spec({**body, "status": status.to_api()}, None)
    if job is not None and problem is None:
        converge(memo.kube, job, None, fresh=False, reporter_image=_reporter_image)


@kopf.on.resume(*JOB, backoff=5)
@kopf.on.create(*JOB, backoff=5)
@kopf.on.update(*JOB, field="spec", backoff=5)
@metrics.timed_reconcile
def reconcile(body: kopf.Body, reason: kopf.Reason, memo: kopf.Memo, **kwargs: Any) -> None:
    """The spec was created or changed (or the operator started): converge, then publish."""
    indexes = Indexes.of(kwargs)
    raw = copy.deepcopy(dict(body))
    key = (raw["metadata"]["namespace"], raw["metadata"]["name"])
    if raw["metadata"].get("deletionTimestamp"):
        return
    with memo.jobs.lock(key):
        fresh = reason == kopf.Reason.CREATE
        # The status we last wrote is fresher than the event's until the watch catches up: a
        # spec change right after the job finished must not render the StatefulSet back to nnodes.
        raw["status"] = memo.jobs.current(raw)
        try:
            job = parse_admitted_job(raw, _policy)
        except InvalidSpecError as exc:
            statefulset = None if fresh else indexes.statefulset(key)
            problem = SpecProblem(Reason.INVALID_SPEC, str(exc))
            if isinstance(exc, PolicyViolation) and statefulset is not None:
                stop_refused_pods(memo, key, statefulset)
            update_status(memo.kube, memo.jobs, raw, statefulset, indexes.pods(key), problem, None)
            log.warning("%s/%s: invalid spec: %s", key[0], key[1], exc)
            return
        # A resume (the operator restarted) trusts the watches: nothing happened to the job, and
        # its children were there when kopf filled the indexes. A spec change reads them.
        known = indexes.children(key) if reason == kopf.Reason.RESUME else None
        done = converge(memo.kube, job, None, fresh=fresh, reporter_image=_reporter_image, known=known)
        status = update_status(
            memo.kube,
            memo.jobs,
            raw,
            done.statefulset,
            indexes.pods(key),
            done.problem,
            done.volume,
            indexes.progress(key),
        )
        scale_down_if_over(memo, raw, status, done.statefulset)


def _deleted(type: str, **_: Any) -> bool:
    return type == "DELETED"


def _deleted_or_progress(type: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> bool:
    """A deleted ConfigMap, or a progress summary (the progress ConfigMap is created empty)."""
    return type == "DELETED" or (
        labels.get(contract.LABEL_COMPONENT) == render_meta.COMPONENT_PROGRESS
        and bool((body.get("data") or {}).get(contract.PROGRESS_KEY))
    )


# Of a Service, a NetworkPolicy or a ConfigMap only a deletion (and a progress summary) matters:
# the filters run in kopf's event loop, so their other events (each job's creation makes several)
# never take a handler thread.
@kopf.on.event("pods", labels=OUR_CHILDREN)
@kopf.on.event("apps", "v1", "statefulsets", labels=OUR_CHILDREN)
@kopf.on.event("services", labels=OUR_CHILDREN, when=_deleted)
@kopf.on.event("networking.k8s.io", "v1", "networkpolicies", labels=OUR_CHILDREN, when=_deleted)
@kopf.on.event("configmaps", labels=OUR_CHILDREN, when=_deleted_or_progress)
def child_changed(
    type: str, namespace: str | None, labels: kopf.Labels, resource: kopf.Resource, memo: kopf.Memo, **kwargs: Any
) -> None:
    """A child changed: re-derive its job's status. A deleted child (other than a pod, which its
    StatefulSet replaces) is re-created: the pods resume from the checkpoints."""
    if namespace is None:  # kopf's type allows it for cluster-scoped kinds; all of these are namespaced
        return
    key = (namespace, labels[contract.LABEL_JOB_NAME])
    indexes = Indexes.of(kwargs)
    if type == "DELETED" and resource.plural != "pods":
        restore_children(memo, key, indexes)
    elif (
        resource.plural in ("pods", "statefulsets")
        or labels.get(contract.LABEL_COMPONENT) == render_meta.COMPONENT_PROGRESS
    ):
        refresh_status(memo, key, indexes)


def stop_refused_pods(memo: kopf.Memo, key: Key, statefulset: dict[str, Any]) -> None:
    """A job that runs and that the admin policy now refuses (created before the policy, or while
    the webhook was bypassed): its StatefulSet goes to 0 pods (SIGTERM: an on-demand checkpoint)
    and stays there until the spec or the policy changes; a reconcile then renders it back."""
    if not (statefulset.get("spec") or {}).get("replicas"):
        return
    live = memo.kube.read("StatefulSet", key[0], statefulset["metadata"]["name"])
    if live is None or not (live.get("spec") or {}).get("replicas"):
        return
    live["spec"]["replicas"] = 0
    memo.kube.replace(live)
    log.warning("%s/%s: the admin policy refuses the running job: its pods are stopped", key[0], key[1])


def restore_children(memo: kopf.Memo, key: Key, indexes: Indexes) -> None:
    """A child of a live job was deleted by someone: create it again. The job is read from the
    API first: when the job itself is being deleted, the garbage collector deletes its children,
    and the watch may say so before the job's own deletion reaches the index."""
    body = index_entry(indexes.jobs_by_name, key)
    if body is None:
        return
    with memo.jobs.lock(key):
        live = memo.kube.read_job(key[0], key[1])
        if (
            live is None
            or live["metadata"]["uid"] != body["metadata"]["uid"]
            or live["metadata"].get("deletionTimestamp")
        ):
            return
        job, problem = check_spec(live, None, _policy)
        if job is None or problem is not None:
            return
        try:
            done = converge(memo.kube, job, None, fresh=False, reporter_image=_reporter_image)
        except kopf.PermanentError as exc:
            log.info("%s/%s: not restoring children: %s", key[0], key[1], exc)
            return
        update_status(
            memo.kube,
            memo.jobs,
            live,
            done.statefulset,
            indexes.pods(key),
            done.problem,
            done.volume,
            indexes.progress(key),
        )


def refresh_status(memo: kopf.Memo, key: Key, indexes: Indexes) -> None:
    """Re-derive a job's status from the indexes: no API reads, one patch if it changed; scale
    to 0 once training is over."""
    with memo.jobs.lock(key):
        body = index_entry(indexes.jobs_by_name, key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        statefulset = indexes.statefulset(key)
        _, problem = check_spec(body, statefulset, _policy)
        if problem is None and statefulset is None:
            problem = memo.jobs.standing_refusal(body)
        pods = indexes.pods(key)  # one view: the restart's backoff counts the failures the status counted
        status = update_status(memo.kube, memo.jobs, body, statefulset, pods, problem, None, indexes.progress(key))
        warn_dropped_progress(memo.kube, memo.jobs, body, indexes.progress_dropped(key))
        scale_down_if_over(memo, body, status, statefulset)
        if not status.training_over and status.phase is not Phase.SUSPENDED:
            restart_ranks_left_behind(memo, body, pods, status)


def restart_ranks_left_behind(
    memo: kopf.Memo, body: dict[str, Any], pods: list[dict[str, Any]], status: SFTJobStatus
) -> None:
    """One rank failed: restart every rank (group_restart_plan), instead of letting the others wait
    in a collective until NCCL's timeout (they cannot save without the failed peer): at once after
    the first failure, after the backoff (status.restartBackoff) after later ones; the policy
    clock comes back for a restart held back."""
    plan = group_restart_plan(pods, status.restarts)
    if plan is None or held_back(plan, now()):
        return
    failure = last_trainer_termination(pods, failures_only=True)
    message = f"{failure.describe() if failure else 'a rank failed'}; restarting every rank ({', '.join(plan.ranks)})"
    if plan.delay_seconds:
        message += f" (restart {plan.restart}, after a backoff of {plan.delay_seconds} s)"
    log.info("%s/%s: %s", body["metadata"]["namespace"], body["metadata"]["name"], message)
    for name in plan.ranks:
        memo.kube.delete_pod(body["metadata"]["namespace"], name, GROUP_RESTART_GRACE_S)
    memo.kube.post_event(body, "Warning", "RestartingGroup", message)


@kopf.on.startup()
async def start_policy_clock(memo: kopf.Memo, **kwargs: Any) -> None:
    """The run-policy clock (policy_clock.py), in kopf's event loop with kopf's context (Events)."""
    view = Indexes.of(kwargs)
    clock = policy_clock.tick(view.jobs_by_name, lambda body: apply_time_policies(memo, body, view))
    memo.policy_clock = asyncio.get_running_loop().create_task(clock, name="run-policy-clock")


@kopf.on.cleanup()
async def stop_policy_clock(memo: kopf.Memo, **_: Any) -> None:
    clock = getattr(memo, "policy_clock", None)
    if clock is not None:
        clock.cancel()


def apply_time_policies(memo: kopf.Memo, raw: dict[str, Any], indexes: Indexes) -> None:
    """What only the clock can tell: a job past its deadline or start-up timeout (Failed, scaled
    to 0), stalled (every rank restarted), or finished longer than its time to live (deleted)."""
    key = (raw["metadata"]["namespace"], raw["metadata"]["name"])
    current = memo.jobs.current(raw)
    status = SFTJobStatus.model_validate(current) if current else None
    policy = RunPolicy.from_spec(raw.get("spec") or {})
    if status is not None and status.phase in (Phase.SUCCEEDED, Phase.FAILED):
        expired = finished_for_longer_than(status, now(), policy.ttl_s)
        if expired:
            log.info("%s/%s: %s; deleting the job", key[0], key[1], expired)
            memo.kube.delete_job(key[0], key[1], raw["metadata"]["uid"])
        return
    stall_s, startup_s = policy.stall_timeout_s, policy.startup_timeout_s
    why = stalled(status, now(), stall_s, startup_s) if status is not None else None
    if status is None or why is None or held_back(stall_restart_plan(status, now(), stall_s, startup_s), now()):
        refresh_status(memo, key, indexes)  # a stall restart held back by the backoff shows in the status
        return
    with memo.jobs.lock(key):
        log.warning("%s/%s: stalled: %s", key[0], key[1], why)
        for pod in indexes.pods(key):
            memo.kube.delete_pod(key[0], pod["metadata"]["name"], GROUP_RESTART_GRACE_S)
        statefulset = indexes.statefulset(key)
        update_status(
            memo.kube, memo.jobs, raw, statefulset, indexes.pods(key), None, None, indexes.progress(key), stall=why
        )


@kopf.on.event(*JOB, when=_deleted)  # the filter: no handler thread for every other event of a job
def job_event(type: str, namespace: str | None, name: str, meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> None:
    if type == "DELETED" and namespace is not None:  # SFTJobs are namespaced: never None
        memo.jobs.forget((namespace, name))
        metrics.forget_job(namespace, name, meta.get("uid", ""))


def wire(
    api_client: kubernetes.client.ApiClient,
    reporter_image: str,
    policy: AdmissionPolicy,
    webhook: tuple[kopf.WebhookServer, JobValidator] | None,
) -> None:
    """Hand the handlers what `run` (operator_main.py) was told, before kopf starts; with a
    webhook, register its handler (the validator) on SFTJobs."""
    global _api_client, _reporter_image, _policy, _webhook_server
    _api_client, _reporter_image, _policy = api_client, reporter_image, policy
    if webhook is not None:
        _webhook_server, validator = webhook
        kopf.on.validate(*JOB, id=admission.WEBHOOK_ID, operations=["CREATE", "UPDATE"])(validator.validate)
