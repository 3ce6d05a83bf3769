"""`sft-operator`: run the operator, print the CRD.

Other command groups (submit/status/wait/list) live in their own modules and register on
``app`` with ``app.command()`` / ``app.add_typer()``; see ``_register_optional_commands``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Kubernetes operator for SFTJobs.")


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
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the operator until interrupted."""
    from sft_operator import handlers

    handlers.run(namespaces=namespace or [], kubeconfig=kubeconfig, liveness=liveness, verbose=verbose)


@app.command()
def crd(
    write: Annotated[
        bool, typer.Option("--write", help="Write crds/ (and charts/sft-operator/crds/ if the chart exists).")
    ] = False,
    root: Annotated[Path, typer.Option(help="Repository root for --write.")] = Path("."),
) -> None:
    """Print the SFTJob CustomResourceDefinition generated from the models."""
    from sft_operator import crd as crd_module

    if write:
        for path in crd_module.write(root):
            typer.echo(f"wrote {path}")
    else:
        typer.echo(crd_module.render_yaml(), nl=False)


def _register_optional_commands() -> None:
    """Colleagues' command modules add themselves to ``app`` on import, if present."""
    for module in ("sft_operator.cli_jobs",):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


_register_optional_commands()
