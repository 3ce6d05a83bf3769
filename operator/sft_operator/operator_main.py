"""`sft-operator-controller run`: the operator's start-up, then kopf until interrupted.

Logging, the API client, /metrics, the admin policy, the webhook's server, kopf's start-up gate,
leader election (leadership.py) and /readyz (readiness.py) are set up here; what kopf watches
and every handler it calls are handlers.py's (wire hands them what this was told).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import kopf

from sft_operator import handlers, kopf_toggles, kubeclient, leadership, metrics, render_meta
from sft_operator.policy import PolicyError, policy_from_env
from sft_operator.readiness import ApiReachability, ReadinessChecker
from sft_operator.webhook import JobValidator, authorized, webhook_server


def run(
    namespaces: list[str],
    kubeconfig: Path | None,
    liveness: str | None,
    verbose: bool,
    metrics_port: int = 0,
    webhook_port: int = 0,
    webhook_cert_dir: Path | None = None,
    election: leadership.Election | None = None,
    readiness: str | None = None,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if not verbose:  # one line per handler call and per probe is noise; failures still show
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    api_client = metrics.instrument_api_client(kubeclient.load_api_client(kubeconfig))
    metrics.serve(metrics_port)  # /metrics (0: off); kopf's liveness endpoint is its own
    reporter_image = os.environ.get(render_meta.ENV_REPORTER_IMAGE) or render_meta.DEFAULT_REPORTER_IMAGE
    try:
        policy = policy_from_env()
    except PolicyError as exc:  # a bad policy stops the start, naming the field
        raise SystemExit(f"sft-operator: {exc}") from None
    webhook = None
    if webhook_port:
        validator = JobValidator(policy, frozenset(namespaces), functools.partial(authorized, api_client))
        webhook = (webhook_server(webhook_port, webhook_cert_dir or Path(".")), validator)
    handlers.wire(api_client, reporter_image, policy, webhook)
    kopf_toggles.install()  # a restart over many jobs: no quadratic start-up gate
    # One active operator: kopf's watches stay paused and writes are refused until this replica
    # holds the Lease (leadership.py); the webhook and the probes answer either way.
    elector = leadership.start(kubeclient.load_api_client(kubeconfig), api_client, election) if election else None
    if readiness:  # Ready only while SFTJobs can be listed and watched (kopf's liveness is not that)
        ReadinessChecker(
            kubeclient.load_api_client(kubeconfig, retries=False),
            namespaces,
            ApiReachability(metrics.set_api_reachable),
            webhook_port=webhook_port,
        ).start(readiness, logging.getLogger().handlers)
    try:
        kopf.run(
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=liveness,
        )
    finally:
        if elector is not None:
            elector.stop()  # hands the Lease over at once
