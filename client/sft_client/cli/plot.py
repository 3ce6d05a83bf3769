"""`sft-operator plot JOB [-o loss.png]`: a job's loss curve from its status.

cli.py adds ``commands`` to its app; the drawing is sft_client.api.plot's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sft_client.cli.common import (
    EXIT_FAILED,
    ContextOption,
    JobNameArgument,
    KubeconfigOption,
    NamespaceOption,
    api,
    connect,
    fail,
)

commands = typer.Typer()


@commands.command()
def plot(
    name: JobNameArgument,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write a PNG here (needs the 'plot' extra: matplotlib).")
    ] = None,
    width: Annotated[int, typer.Option(min=10, max=400, help="Text chart: columns.")] = 60,
    height: Annotated[int, typer.Option(min=4, max=100, help="Text chart: rows.")] = 12,
    namespace: NamespaceOption = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
) -> None:
    """Draw an SFTJob's loss curve (status.progress.lossHistory): a PNG with -o, else in the terminal."""
    from sft_client.api import plot as plot_module

    sft_api = api()
    client, namespace = connect(kubeconfig, context, namespace)
    try:
        job = sft_api.get_job(client, name, namespace)
    except sft_api.SFTJobNotFoundError as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    points = plot_module.loss_points(job.get("status"))
    if not points:
        raise fail(f"sftjob {namespace}/{name} has no loss history yet (no training step published)", EXIT_FAILED)
    title = f"{namespace}/{name}: loss by samples seen"
    if output is None:
        typer.echo(plot_module.text_chart(points, width=width, height=height, title=title))
        return
    try:
        plot_module.save_png(points, output, title=f"{namespace}/{name}")
    except plot_module.PlotUnavailableError as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    typer.echo(f"wrote {output} ({len(points)} points)", err=True)
