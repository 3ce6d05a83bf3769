"""Raw-JSON access to the API server for the dev local node.

The local node works on the API's own JSON (camelCase dicts), which the pure planning code takes
as is; this wraps the kubernetes client's transport (auth, TLS) without its typed models.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Callable, Iterator
from urllib.parse import quote

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

MERGE_PATCH = "application/merge-patch+json"
WATCH_TIMEOUT_S = 240


class KubeRest:
    """GET/POST/PATCH/DELETE on API paths with dict bodies; errors raise ``ApiException``."""

    def __init__(self, api_client: client.ApiClient):
        self.api_client = api_client
        self.configuration = api_client.configuration

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str) -> "KubeRest":
        return cls(config.new_client_from_config(config_file=kubeconfig))

    def clone(self) -> "KubeRest":
        """A client with its own connection pool (one per thread that blocks on watches)."""
        return KubeRest(client.ApiClient(self.configuration))

    @property
    def server(self) -> str:
        return self.configuration.host

    @property
    def ca_file(self) -> str | None:
        return self.configuration.ssl_ca_cert

    def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | tuple[float, float] | None = 30,
        stream: bool = False,
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        query_params = [(k, v) for k, v in (query or {}).items() if v is not None]
        method, url, headers, body, post = self.api_client.param_serialize(
            method, path, query_params=query_params, header_params=headers, body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api_client.call_api(method, url, headers, body, post, _request_timeout=timeout)
        if stream and 200 <= response.status <= 299:
            return response.response
        response.read()
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=response.data.decode(errors="replace"), data=None)
        return json.loads(response.data) if response.data else None

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body=body)

    def merge_patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, body=body, content_type=MERGE_PATCH)

    def delete(self, path: str, body: Any = None) -> Any:
        return self.request("DELETE", path, body=body)

    def watch(self, path: str, resource_version: str, stop: threading.Event,
              on_response: Callable[[Any], None] = lambda r: None, **query: Any) -> Iterator[dict[str, Any]]:
        """Yields watch events ({"type", "object"}) until the server ends the watch or ``stop``.

        ``on_response`` receives the open HTTP response so another thread can shut it down.
        """
        query = {**query, "watch": "true", "resourceVersion": resource_version,
                 "allowWatchBookmarks": "true", "timeoutSeconds": WATCH_TIMEOUT_S}
        response = self.request("GET", path, query=query, stream=True, timeout=(10, WATCH_TIMEOUT_S + 30))
        on_response(response)
        try:
            buffer = b""
            for chunk in response.stream(64 * 1024, decode_content=True):
                if stop.is_set():
                    return
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            response.release_conn()


def gone(event: dict[str, Any]) -> bool:
    """A watch ERROR event saying the resourceVersion is too old: re-list."""
    return event.get("type") == "ERROR" and (event.get("object") or {}).get("code") == 410


def pod_path(namespace: str, name: str, sub: str = "") -> str:
    path = f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}"
    return f"{path}/{sub}" if sub else path
