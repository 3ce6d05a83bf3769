"""`sft-operator suspend / resume / delete`: change a job's course from a terminal.

cli.py adds ``commands`` to its app; the work is sft_client.api.lifecycle's.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from sft_client.cli.common import (
    EXIT_FAILED,
    ContextOption,
    JobNameArgument,
    KubeconfigOption,
    NamespaceOption,
    TimeoutOption,
    api,
    connect,
    fail,
    follow,
)

commands = typer.Typer()

WaitOption = Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the job, with progress, until it is done.")]


def _patch_or_exit(call: Any, name: str, namespace: str, client: Any) -> None:
    try:
        call(client, name, namespace)
    except api().SFTJobNotFoundError as exc:
        raise fail(str(exc), EXIT_FAILED) from None


@commands.command()
def suspend(
    name: JobNameArgument,
    namespace: NamespaceOption = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
) -> None:
    """Suspend an SFTJob: its pods save a checkpoint and stop.

    Sets spec.suspend=true. --wait follows it until no pod runs, then says what a resume starts from."""
    sft_api = api()
    client, namespace = connect(kubeconfig, context, namespace)
    _patch_or_exit(sft_api.suspend_job, name, namespace, client)
    typer.echo(f"sftjob.finetune.dev/{name} suspended in {namespace}", err=True)
    if not wait:
        return
    from sft_client.api.handle import suspended_and_stopped

    follow(client, name, namespace, timeout, until=suspended_and_stopped)
    view = sft_api.view_job(sft_api.get_job(client, name, namespace))
    if view.finished:
        typer.echo(f"the job is {view.phase}: its training is over, there is nothing to resume")
    elif view.resumes_from:
        typer.echo(f"stopped; resuming starts from {view.resumes_from}")
    else:
        typer.echo("stopped; no full state saved yet: resuming starts training from the beginning")


@commands.command()
def resume(
    name: JobNameArgument,
    namespace: NamespaceOption = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
) -> None:
    """Resume a suspended SFTJob from its newest full state.

    Sets spec.suspend=false. --wait follows it to the end, like `wait`."""
    sft_api = api()
    client, namespace = connect(kubeconfig, context, namespace)
    _patch_or_exit(sft_api.resume_job, name, namespace, client)
    typer.echo(f"sftjob.finetune.dev/{name} resumed in {namespace}", err=True)
    if wait:
        for checkpoint in follow(client, name, namespace, timeout).checkpoints:
            typer.echo(checkpoint.path)


@commands.command()
def delete(
    name: JobNameArgument,
    keep_checkpoints: Annotated[
        bool,
        typer.Option(
            "--keep-checkpoints",
            help="Keep the checkpoint claim even when the job owns it (checkpoints.deleteWithJob: true).",
        ),
    ] = False,
    namespace: NamespaceOption = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
) -> None:
    """Delete an SFTJob; says what happens to its checkpoint claim.

    Its pods, StatefulSet, Service and ConfigMaps go with it; the checkpoint claim is kept unless
    checkpoints.deleteWithJob is true (and then too with --keep-checkpoints)."""
    sft_api = api()
    client, namespace = connect(kubeconfig, context, namespace)
    try:
        deletion = sft_api.delete_job(client, name, namespace, keep_checkpoints=keep_checkpoints)
    except sft_api.SFTJobNotFoundError as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    typer.echo(f"sftjob.finetune.dev/{name} deleted from {namespace}; {deletion.note}")
