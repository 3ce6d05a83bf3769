"""A job's checkpoint to this machine: ``result.download(to)``, ``sft-operator download``.

Which checkpoint and where it lies are read from the job (its status lists only complete
hf_format checkpoints; its spec names the claim and the directory in it); transfer.py copies it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, TextIO

from sft_client.api import transfer
from sft_client.api.display import ByteProgress
from sft_client.api.results import Checkpoint, JobView, view_job
from sft_models.models import parse_job
from sft_models.naming import claim_name


def choose_checkpoint(view: JobView, name: str | None) -> Checkpoint:
    """The named complete checkpoint, or the final (newest) one; LookupError saying what there is."""
    listed = ", ".join(c.name for c in view.checkpoints) or "none yet"
    if name is None:
        if not view.checkpoints:
            raise LookupError(f"SFTJob {view.namespace}/{view.name} has no complete checkpoint yet ({view.phase})")
        return view.checkpoints[-1]
    for checkpoint in view.checkpoints:
        if checkpoint.name == name:
            return checkpoint
    raise LookupError(f"SFTJob {view.namespace}/{view.name} has no complete checkpoint {name!r} (it has: {listed})")


def download_checkpoint(
    api_client: Any,
    job: dict[str, Any],
    to: str | os.PathLike[str],
    name: str | None = None,
    *,
    show_progress: bool = True,
    stream: TextIO | None = None,
    start_timeout_s: float | None = None,
) -> Path:
    """Copy a complete checkpoint of ``job`` (the object as the API returns it) to ``to``."""
    view = view_job(job)
    checkpoint = choose_checkpoint(view, name)
    parsed = parse_job(job)
    out = stream if stream is not None else sys.stderr

    def progress(description: str, total: int | None) -> ByteProgress:
        return ByteProgress(description, total, stream=out, enabled=show_progress)

    transfer.download_directory(
        api_client,
        view.namespace,
        claim=claim_name(parsed),
        directory=transfer.relative_to_mount(checkpoint.pod_path),
        to=Path(to),
        job_name=view.name,
        image=parsed.spec.pod.image,
        image_pull_policy=parsed.spec.pod.image_pull_policy,
        fs_group=parsed.spec.pod.fs_group,
        progress=progress,
        start_timeout_s=start_timeout_s,
    )
    return Path(to)
