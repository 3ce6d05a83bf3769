"""Kubernetes API clients whose calls never wait forever.

The generated client sends every request without a timeout unless the call names one. A
connection that stalls (an apiserver restart, a dropped load-balancer flow) would then block
its thread for good: in the operator, kopf's handler for that job never returns and the job's
status freezes; in the reporter sidecar, progress stops while training goes on. With a default
timeout the call fails, and the caller's retry (kopf's backoff, the reporter's next scan) heals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes

# (connect, read) seconds: far above any answer of a healthy apiserver to the calls we make.
DEFAULT_REQUEST_TIMEOUT = (10.0, 60.0)
# Connections kept open to the API server: one per thread that may call at once (kopf's handler
# threads and the children's pool). The client's default (5 per CPU) is fewer: a connection over
# it is closed after each call, and the next call pays a new TLS handshake.
CONNECTION_POOL_SIZE = 48


class BoundedApiClient(kubernetes.client.ApiClient):
    """An ApiClient that gives every call DEFAULT_REQUEST_TIMEOUT unless it names its own."""

    request_timeout: Any = DEFAULT_REQUEST_TIMEOUT

    def __init__(self, configuration: Any = None, *args: Any, **kwargs: Any) -> None:
        if configuration is None:
            configuration = kubernetes.client.Configuration.get_default_copy()
        configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, CONNECTION_POOL_SIZE)
        super().__init__(configuration, *args, **kwargs)

    def call_api(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("_request_timeout") is None:
            kwargs["_request_timeout"] = self.request_timeout
        return super().call_api(*args, **kwargs)


def load_api_client(kubeconfig: Path | None = None, retries: Any = None) -> BoundedApiClient:
    """From ``kubeconfig``, else in-cluster, else $KUBECONFIG / ~/.kube/config. ``retries``:
    urllib3's (None: its default, 3 connection retries; False: none, one attempt per call)."""
    configuration = kubernetes.client.Configuration()
    if kubeconfig is not None:
        kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    else:
        try:
            kubernetes.config.load_incluster_config(client_configuration=configuration)
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(client_configuration=configuration)
    if retries is not None:
        configuration.retries = retries
    return BoundedApiClient(configuration)
