"""`sft-operator-controller run` (the operator image's entrypoint; also `python -m sft_operator run`):
the operator's own command line, apart from the client's `sft-operator`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="The SFTJob operator.")


@app.command()
def run(
    namespace: Annotated[
        Optional[list[str]],
        typer.Option("--namespace", "-n", help="Watch this namespace (repeat for more); all if omitted."),
    ] = None,
    kubeconfig: Annotated[
        Optional[Path], typer.Option(help="Kubeconfig file; default: in-cluster, then $KUBECONFIG.")
    ] = None,
    liveness: Annotated[
        Optional[str], typer.Option(help="Serve a liveness probe, e.g. http://0.0.0.0:8080/healthz.")
    ] = None,
    readiness: Annotated[
        Optional[str],
        typer.Option(
            help="Serve a readiness probe, e.g. http://0.0.0.0:8081/readyz: 200 while "
            "SFTJobs can be listed and watched, 503 and the reason while not."
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    metrics_port: Annotated[
        int,
        typer.Option(
            "--metrics-port",
            envvar="SFT_METRICS_PORT",
            min=0,
            max=65535,
            help="Serve Prometheus metrics on http://0.0.0.0:PORT/metrics; 0: off.",
        ),
    ] = 8000,
    webhook_port: Annotated[
        int,
        typer.Option(
            "--webhook-port",
            envvar="SFT_WEBHOOK_PORT",
            min=0,
            max=65535,
            help="Serve the SFTJob validating admission webhook on https://0.0.0.0:PORT/validate-sftjobs; 0: off.",
        ),
    ] = 0,
    webhook_cert_dir: Annotated[
        Optional[Path],
        typer.Option("--webhook-cert-dir", help="The webhook's serving certificate: tls.crt and tls.key in it."),
    ] = None,
    leader_elect: Annotated[
        bool,
        typer.Option(
            "--leader-elect",
            help="Act only while holding a coordination.k8s.io Lease "
            "(several replicas: one active, the others standing by).",
        ),
    ] = False,
    leader_election_namespace: Annotated[
        Optional[str], typer.Option(help="The Lease's namespace; default: $POD_NAMESPACE, else the pod's own.")
    ] = None,
    leader_election_lease: Annotated[str, typer.Option(help="The Lease's name.")] = "sft-operator",
    leader_election_id: Annotated[
        Optional[str], typer.Option(help="This replica's holder identity; default: the pod's name and a random part.")
    ] = None,
) -> None:
    """Run the operator until interrupted."""
    from sft_operator import leadership, operator_main

    operator_main.run(
        namespaces=namespace or [],
        kubeconfig=kubeconfig,
        liveness=liveness,
        verbose=verbose,
        metrics_port=metrics_port,
        webhook_port=webhook_port,
        webhook_cert_dir=webhook_cert_dir,
        election=leadership.Election(leader_election_namespace, leader_election_lease, leader_election_id)
        if leader_elect
        else None,
        readiness=readiness,
    )


@app.callback()
def main() -> None:
    """The SFTJob operator (the client commands are `sft-operator`'s)."""
