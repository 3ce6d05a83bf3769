"""What every job command of the CLI shares: options, exit codes, connecting, following a job.

The work is done by sft_client.api, imported only when a command runs, so that
`sft-operator run` and `--help` never depend on it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from sft_client.api.results import JobView

EXIT_FAILED = 1  # the job Failed, or it was not found / deleted
EXIT_INVALID = 2  # the parameters or manifest are invalid: nothing was created
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130

NamespaceOption = Annotated[
    str | None, typer.Option("--namespace", "-n", help="Namespace; default: the kubeconfig context's.")
]
KubeconfigOption = Annotated[
    Path | None, typer.Option("--kubeconfig", help="Kubeconfig file; default: $KUBECONFIG, ~/.kube/config, in-cluster.")
]
ContextOption = Annotated[str | None, typer.Option("--context", help="Kubeconfig context.")]
TimeoutOption = Annotated[
    float | None, typer.Option("--timeout", help="Stop waiting after this many seconds (the job keeps running).")
]
JobNameArgument = Annotated[str, typer.Argument(help="SFTJob name.")]


def api() -> Any:
    import sft_client.api

    return sft_client.api


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Not a terminal (a pipe, a log): wide enough that tables are not folded.
    return Console(file=stream, width=None if stream.isatty() else 200, soft_wrap=False)


def fail(message: str, code: int) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code)


def connect(kubeconfig: Path | None, context: str | None, namespace: str | None) -> tuple[Any, str]:
    client, context_namespace = api().connect(kubeconfig, context)
    return client, namespace or context_namespace


def cell(value: Any, fmt: str = "{}") -> str:
    return "" if value is None else fmt.format(value)


def follow(
    client: Any,
    name: str,
    namespace: str,
    timeout: float | None,
    until: Callable[[JobView], bool] | None = None,
) -> Any:
    """Follow the job with progress (a bar on a terminal, lines on stderr otherwise) until
    ``until`` (default: its end); return its result. A failure, timeout or Ctrl-C exits with
    the reason and the matching exit code."""
    sft_api = api()
    extra = {} if until is None else {"until": until}
    try:
        return sft_api.wait_for_job(
            client, name, namespace, timeout=timeout, display=sft_api.ProgressDisplay(), **extra
        )
    except (sft_api.SFTJobFailedError, sft_api.SFTJobDeletedError, sft_api.SFTJobNotFoundError) as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    except TimeoutError as exc:
        raise fail(str(exc), EXIT_TIMEOUT) from None
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
