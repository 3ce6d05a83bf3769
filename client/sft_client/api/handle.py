"""One SFTJob on the cluster, by name: read, follow, logs, events, suspend, resume, delete.

from sft_client.api import open_job
job = open_job("qwen", namespace="ml")
for line in job.logs(follow=True): print(line)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from sft_client.api import job_events, jobs, lifecycle, pod_logs
from sft_client.api.display import ProgressDisplay
from sft_client.api.results import JobView, SFTJobResult, result_of, view_job
from sft_models.models import Phase


def suspended_and_stopped(view: JobView) -> bool:
    """What waiting for a suspend waits for: no pod running any more (each saved its on-demand
    checkpoint first), or the job ended."""
    return view.finished or (view.phase == Phase.SUSPENDED.value and view.ready_nodes == 0)


class SFTJobHandle:
    """An SFTJob by name and namespace; each call reads or changes it on the cluster."""

    def __init__(self, name: str, namespace: str, api_client: Any):
        self.name = name
        self.namespace = namespace
        self.api_client = api_client

    def __repr__(self) -> str:
        return f"SFTJobHandle({self.namespace}/{self.name})"

    def get(self) -> dict[str, Any]:
        """The SFTJob object as the API returns it."""
        return jobs.get_job(self.api_client, self.name, self.namespace)

    def view(self) -> JobView:
        return view_job(self.get())

    def result(self) -> SFTJobResult:
        """Its current result (phase, checkpoints, metrics), without waiting."""
        return result_of(self.get(), api_client=self.api_client)

    def wait(self, timeout: float | None = None, show_progress: bool = True) -> SFTJobResult:
        """Follow it to the end with progress; raises SFTJobFailedError with the reason."""
        return jobs.wait_for_job(
            self.api_client, self.name, self.namespace, timeout=timeout, display=ProgressDisplay(enabled=show_progress)
        )

    def download(self, to: str | os.PathLike[str], checkpoint: str | None = None, show_progress: bool = True) -> Any:
        """Copy its final (or the named) complete checkpoint to ``to``, byte for byte
        (SFTJobResult.download)."""
        return self.result().download(to, checkpoint, show_progress=show_progress)

    def plot_loss(self, output: str | os.PathLike[str] | None = None) -> Any:
        """Its loss curve as it stands: a PNG at ``output``, else a text chart (SFTJobResult.plot_loss)."""
        return self.result().plot_loss(output)

    def logs(
        self, follow: bool = False, node: int = 0, tail_lines: int | None = None, previous: bool = False
    ) -> Iterator[str]:
        """The trainer's log lines on node ``node`` (pod ``<name>-<node>``)."""
        return pod_logs.stream_logs(
            self.api_client,
            self.name,
            self.namespace,
            node=node,
            follow=follow,
            tail_lines=tail_lines,
            previous=previous,
        )

    def events(self) -> list[job_events.JobEvent]:
        """Its Events and its pods', StatefulSet's and checkpoint claim's, oldest first."""
        return job_events.job_events(self.api_client, self.name, self.namespace)

    def suspend(self, wait: bool = False, timeout: float | None = None, show_progress: bool = True) -> JobView:
        """spec.suspend=true. With ``wait``: follow it, with progress, until no pod runs (each saved
        an on-demand checkpoint first); SFTJobFailedError if it fails meanwhile. Returns its view
        (``resumes_from``: the full state a resume starts from)."""
        lifecycle.suspend_job(self.api_client, self.name, self.namespace)
        if wait:
            self._wait(suspended_and_stopped, timeout, show_progress)
        return self.view()

    def resume(self, wait: bool = False, timeout: float | None = None, show_progress: bool = True) -> JobView:
        """spec.suspend=false. With ``wait``: follow it to the end like wait()."""
        lifecycle.resume_job(self.api_client, self.name, self.namespace)
        if wait:
            self._wait(lambda view: view.finished, timeout, show_progress)
        return self.view()

    def delete(self, keep_checkpoints: bool = False) -> lifecycle.Deletion:
        """Delete it; the returned Deletion says what happened to the checkpoint claim."""
        return lifecycle.delete_job(self.api_client, self.name, self.namespace, keep_checkpoints=keep_checkpoints)

    def _wait(self, until: Callable[[JobView], bool], timeout: float | None, show_progress: bool) -> None:
        jobs.wait_for_job(
            self.api_client,
            self.name,
            self.namespace,
            timeout=timeout,
            display=ProgressDisplay(enabled=show_progress),
            until=until,
        )


def open_job(
    name: str,
    namespace: str | None = None,
    *,
    api_client: Any = None,
    kubeconfig: str | os.PathLike[str] | None = None,
    context: str | None = None,
) -> SFTJobHandle:
    """A handle on an existing SFTJob (namespace: the kubeconfig context's by default).
    Nothing is read until a method is called."""
    if api_client is None:
        api_client, default_namespace = jobs.connect(kubeconfig, context)
        namespace = namespace or default_namespace
    return SFTJobHandle(name, namespace or jobs.DEFAULT_NAMESPACE, api_client)
