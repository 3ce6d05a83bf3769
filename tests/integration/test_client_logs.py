"""`sft-operator logs` and `job.logs()` through the real API server.

The integration tier has no kubelet. So this test stands up the smallest kubelet the API server
can talk to: a Node whose status points at an HTTPS server in this process
(``/containerLogs/<ns>/<pod>/<c>``, the path the API server proxies `kubectl logs` to).
Everything between the client and the kubelet is real: the request the client makes, the API
server's checks (pod, container, node) and its streaming proxy. What is not real: the log's
content (the stub's lines, not a trainer's).
"""

from __future__ import annotations

import http.server
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import kubernetes
import pytest
from typer.testing import CliRunner

from devtools.pki import make_ca, make_serving_cert
from sft_client.api import LogsUnavailableError, open_job
from sft_client.cli import app
from sft_core import contract

pytestmark = pytest.mark.integration

runner = CliRunner()
LINES = ["step 1 loss 2.5", "step 2 loss 2.1", "step 3 loss 1.9"]


class StubKubelet:
    """Serves /containerLogs/...: each log is LINES, sent line by line (follow: with a pause
    between lines, as a live container writes them). Records the requests it got."""

    def __init__(self, cert_dir: Path):
        ca = make_ca("stub-kubelet-ca")
        serving = make_serving_cert(ca, ("127.0.0.1",), ("localhost",), common_name="stub-kubelet")
        (cert_dir / "kubelet.crt").write_bytes(serving.cert_pem)
        (cert_dir / "kubelet.key").write_bytes(serving.key_pem)
        self.requests: list[tuple[str, dict[str, list[str]]]] = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the body ends when the connection closes

            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = parse_qs(url.query)
                stub.requests.append((url.path, query))
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                for line in LINES:
                    self.wfile.write(f"{line}\n".encode())
                    self.wfile.flush()
                    if query.get("follow") == ["true"]:
                        time.sleep(0.2)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_dir / "kubelet.crt", cert_dir / "kubelet.key")
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub_node(api_client: Any, namespace: str, tmp_path: Path) -> Iterator[tuple[str, StubKubelet]]:
    """A Node named after the test's namespace whose kubelet is a StubKubelet."""
    kubelet = StubKubelet(tmp_path)
    core = kubernetes.client.CoreV1Api(api_client)
    name = f"stub-{namespace}"[:63]
    core.create_node({"metadata": {"name": name}})
    core.patch_node_status(
        name,
        {
            "status": {
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet.port}},
            }
        },
    )
    try:
        yield name, kubelet
    finally:
        core.delete_node(name)
        kubelet.stop()


def create_job_and_pod(api_client: Any, namespace: str, node_name: str) -> None:
    """The job (as submitted; no operator) and its pod 0 bound to the stub node."""
    kubernetes.client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        contract.GROUP,
        contract.VERSION,
        namespace,
        contract.PLURAL,
        {
            "apiVersion": contract.API_VERSION,
            "kind": contract.KIND,
            "metadata": {"name": "tiny"},
            "spec": {
                "modelPath": "/m",
                "dataPath": "/d.jsonl",
                "numEpochs": 1,
                "effectiveBatchSize": 2,
                "learningRate": 1e-4,
                "maxSeqLen": 8,
                "nnodes": 2,
                "device": "cpu",
                "checkpoints": {"existingClaim": "c"},
            },
        },
    )
    kubernetes.client.CoreV1Api(api_client).create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "tiny-0", "labels": {contract.LABEL_JOB_NAME: "tiny"}},
            "spec": {
                "nodeName": node_name,
                "containers": [
                    {"name": "reporter", "image": "sft-operator:test"},
                    {"name": contract.TRAINER_CONTAINER, "image": "sft-trainer:test"},
                ],
            },
        },
    )


def cli(control_plane: Any, *args: str) -> Any:
    return runner.invoke(app, [*args, "--kubeconfig", str(control_plane.kubeconfig)])


def test_logs_of_a_node_from_the_cli_and_python(
    crd: str, control_plane: Any, api_client: Any, namespace: str, stub_node: tuple[str, StubKubelet]
) -> None:
    node_name, kubelet = stub_node
    create_job_and_pod(api_client, namespace, node_name)

    shown = cli(control_plane, "logs", "tiny", "-n", namespace)
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.splitlines() == LINES
    path, query = kubelet.requests[-1]
    assert path == f"/containerLogs/{namespace}/tiny-0/{contract.TRAINER_CONTAINER}"
    assert "follow" not in query

    followed = cli(control_plane, "logs", "tiny", "-f", "--tail", "2", "--node", "0", "-n", namespace)
    assert followed.exit_code == 0, followed.output
    assert followed.stdout.splitlines() == LINES
    assert (kubelet.requests[-1][1]["follow"], kubelet.requests[-1][1]["tailLines"]) == (["true"], ["2"])

    job = open_job("tiny", namespace, api_client=api_client)
    started = time.monotonic()
    streamed = []
    for line in job.logs(follow=True):  # arrives line by line, not all at the end
        streamed.append((line, time.monotonic() - started))
    assert [line for line, _ in streamed] == LINES
    assert streamed[-1][1] - streamed[0][1] >= 0.3, streamed
    assert list(job.logs(previous=True)) == LINES and kubelet.requests[-1][1]["previous"] == ["true"]


def test_logs_say_why_there_are_none(
    crd: str, control_plane: Any, api_client: Any, namespace: str, stub_node: tuple[str, StubKubelet]
) -> None:
    create_job_and_pod(api_client, namespace, stub_node[0])
    missing = cli(control_plane, "logs", "tiny", "--node", "1", "-n", namespace)
    assert missing.exit_code == 1
    assert missing.stderr.strip() == (
        f"pod {namespace}/tiny-1 does not exist (SFTJob tiny is Pending; its pods run only while it trains)"
    )
    beyond = cli(control_plane, "logs", "tiny", "--node", "2", "-n", namespace)
    assert (beyond.exit_code, beyond.stderr.strip()) == (
        1,
        f"SFTJob {namespace}/tiny has nodes 0..1; there is no node 2",
    )
    with pytest.raises(LogsUnavailableError, match="does not exist"):
        open_job("tiny", namespace, api_client=api_client).logs(node=1)
    gone = cli(control_plane, "logs", "nope", "-n", namespace)
    assert (gone.exit_code, gone.stderr.strip()) == (1, f"SFTJob {namespace}/nope not found")
