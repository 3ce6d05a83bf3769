"""The validating webhook's kopf side: its HTTPS server, the handler around admission.review
(which decides), and the LocalSubjectAccessReviews it asks. handlers.wire registers it when the
operator serves a webhook (`run --webhook-port`; operator_main.py builds it)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
import kubernetes

from sft_operator import admission, metrics
from sft_operator.policy import AdmissionPolicy

log = logging.getLogger("sft_operator")
WEBHOOK_API_TIMEOUT_S = 5  # a LocalSubjectAccessReview; the chart gives the webhook 10 s


@dataclass(frozen=True)
class JobValidator:
    """What the webhook is told by `run`: the admin policy, the namespaces it speaks for (empty:
    every namespace) and how it asks whether the requesting user may do what the job does."""

    policy: AdmissionPolicy
    namespaces: frozenset[str]
    authorized: Callable[[dict[str, Any]], bool]

    def validate(
        self,
        body: kopf.Body,
        userinfo: kopf.UserInfo,
        old: kopf.Body | None = None,
        operation: str | None = None,
        **_: Any,
    ) -> None:
        """A CREATE or UPDATE of an SFTJob: admission.review decides; a refusal reaches the user's
        `kubectl apply` with its message and code."""
        namespace = body.get("metadata", {}).get("namespace", "")
        if self.namespaces and namespace not in self.namespaces:
            return  # not a namespace of this operator's: it creates nothing there, and may not ask
        try:
            admission.review(operation, body, old, userinfo, self.policy, self.authorized)
        except admission.Refusal as refusal:
            metrics.count_admission(operation, refusal.why)
            log.info(
                "%s/%s: refused the %s by %s: %s",
                namespace,
                body.get("metadata", {}).get("name"),
                operation,
                userinfo.get("username"),
                refusal.message,
            )
            raise kopf.AdmissionError(refusal.message, code=refusal.code) from None
        metrics.count_admission(operation, "admitted")


def authorized(api_client: kubernetes.client.ApiClient | None, review: dict[str, Any]) -> bool:
    """The API server's answer to a LocalSubjectAccessReview; no answer is a refusal (fail closed)."""
    api = kubernetes.client.AuthorizationV1Api(api_client)
    try:
        answer = api.create_namespaced_local_subject_access_review(
            review["metadata"]["namespace"],
            review,  # type: ignore[arg-type]  # the client sends a dict body as it is, no model needed
            _request_timeout=WEBHOOK_API_TIMEOUT_S,
        )
    except (kubernetes.client.exceptions.ApiException, OSError) as exc:
        raise admission.Refusal(
            f"could not check the requesting user's permissions: {exc}".strip(),
            admission.HTTP_INTERNAL_ERROR,
            admission.UNCHECKED,
        ) from None
    return bool(answer.status is not None and answer.status.allowed)


def webhook_server(port: int, cert_dir: Path) -> kopf.WebhookServer:
    """HTTPS on every interface with the serving certificate from ``cert_dir`` (tls.crt, tls.key:
    a kubernetes.io/tls Secret mounted there); kopf reloads it when the files change."""
    for name in ("tls.crt", "tls.key"):
        if not (cert_dir / name).is_file():
            raise SystemExit(f"--webhook-cert-dir {cert_dir}: no {name} (the webhook's serving certificate)")
    return kopf.WebhookServer(
        addr="0.0.0.0", port=port, certfile=str(cert_dir / "tls.crt"), pkeyfile=str(cert_dir / "tls.key")
    )
