"""The operator's admission webhook as the local API server reaches it: the operator runs here as a
process, so a ValidatingWebhookConfiguration calls it by URL on 127.0.0.1 with a certificate made
for that address (the chart's own, made for its Service's DNS name, is checked in the unit tests
and on the real node)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import kubernetes.client

from devtools.pki import make_ca, make_serving_cert
from sft_operator import admission

WEBHOOK_HOST = "127.0.0.1"


def serving_cert(directory: Path) -> tuple[Path, bytes]:
    """tls.crt and tls.key for 127.0.0.1 in ``directory`` (as the chart's Secret is mounted), and
    the CA's PEM for the configuration's caBundle."""
    ca = make_ca("sft-operator-webhook-test-ca")
    pair = make_serving_cert(ca, ip_addresses=(WEBHOOK_HOST,), dns_names=("localhost",), common_name="sft-webhook")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tls.crt").write_bytes(pair.cert_pem)
    (directory / "tls.key").write_bytes(pair.key_pem)
    return directory, ca.cert_pem


def url(port: int) -> str:
    return f"https://{WEBHOOK_HOST}:{port}/{admission.WEBHOOK_ID}"


def point_at(api_client: Any, name: str, port: int, ca_pem: bytes) -> dict[str, Any]:
    """Send the configuration's webhook to the operator on ``port`` (instead of the chart's Service,
    which no pod backs here: no kubelet). Returns the webhook as the chart made it."""
    api = kubernetes.client.AdmissionregistrationV1Api(api_client)
    configuration = api_client.sanitize_for_serialization(api.read_validating_webhook_configuration(name))
    (webhook,) = configuration["webhooks"]
    as_installed = dict(webhook)
    webhook["clientConfig"] = {"url": url(port), "caBundle": base64.b64encode(ca_pem).decode()}
    api.replace_validating_webhook_configuration(name, configuration)
    return as_installed


def listening(port: int) -> bool:
    """The operator's webhook accepts connections (kopf starts it shortly after its liveness)."""
    import socket

    try:
        with socket.create_connection((WEBHOOK_HOST, port), timeout=1):
            return True
    except OSError:
        return False
