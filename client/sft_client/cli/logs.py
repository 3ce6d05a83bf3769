"""`sft-operator logs / events`: what a job's pods print and what happened to it.

cli.py adds ``commands`` to its app; the work is sft_client.api.pod_logs' and job_events'.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from sft_client.cli.common import (
    EXIT_FAILED,
    ContextOption,
    JobNameArgument,
    KubeconfigOption,
    NamespaceOption,
    api,
    connect,
    console,
    fail,
)

if TYPE_CHECKING:
    from sft_client.api.job_events import JobEvent

commands = typer.Typer()

EVENT_COLUMNS = ("TIME", "TYPE", "REASON", "OBJECT", "MESSAGE")


@commands.command()
def logs(
    name: JobNameArgument,
    node: Annotated[int, typer.Option("--node", help="Node rank: pod <name>-<node>.")] = 0,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the trainer stops.")] = False,
    tail: Annotated[int | None, typer.Option("--tail", help="Only the last N lines.")] = None,
    previous: Annotated[
        bool, typer.Option("--previous", "-p", help="The trainer's log before its last restart.")
    ] = False,
    namespace: NamespaceOption = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
) -> None:
    """The trainer's log of one node (default node 0, rank 0)."""
    sft_api = api()
    client, namespace = connect(kubeconfig, context, namespace)
    try:
        lines = sft_api.open_job(name, namespace, api_client=client).logs(
            follow=follow, node=node, tail_lines=tail, previous=previous
        )
        for line in lines:
            typer.echo(line)
    except (sft_api.LogsUnavailableError, sft_api.SFTJobNotFoundError) as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def event_row(event: JobEvent) -> list[str]:
    """One `events` line (pure); a repeated event says how often."""
    message = event.message if event.count <= 1 else f"{event.message} (x{event.count})"
    return [event.time, event.type, event.reason, event.object, message]


@commands.command()
def events(
    name: JobNameArgument,
    namespace: NamespaceOption = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
) -> None:
    """The job's Events and its pods', StatefulSet's and checkpoint claim's, oldest first."""
    from rich.table import Table
    from rich.text import Text

    sft_api = api()
    client, namespace = connect(kubeconfig, context, namespace)
    try:
        found = sft_api.open_job(name, namespace, api_client=client).events()
    except sft_api.SFTJobNotFoundError as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    if not found:
        typer.echo(f"No events for SFTJob {namespace}/{name}.")
        return
    table = Table(box=None, header_style="bold")
    for column in EVENT_COLUMNS:
        table.add_column(column, overflow="fold" if column == "MESSAGE" else "ellipsis")
    for event in found:
        table.add_row(*(Text(value) for value in event_row(event)))  # messages are text, not markup
    console().print(table)
