"""`sft-operator` (also `kubectl sft`): the job commands (submit, status, wait, list, suspend, resume,
delete, logs, events, plot, download), one group per module of this package."""

from __future__ import annotations

import typer

from sft_client.cli import jobs, lifecycle, logs, plot

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Submit, follow and manage SFTJobs.")

for command_group in (jobs.commands, lifecycle.commands, logs.commands, plot.commands):
    app.add_typer(command_group)
