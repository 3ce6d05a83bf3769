"""The one text rendering of a job's progress (pure): the plain progress line and the progress
bar's detail column are both made of ``progress_facts``."""

from __future__ import annotations

from sft_client.api.results import JobView


def epoch_text(view: JobView) -> str:
    """2/3; just 2 when the number of epochs is unknown; "" when the epoch is."""
    if view.epoch is None:
        return ""
    return f"{view.epoch}/{view.num_epochs}" if view.num_epochs else str(view.epoch)


def samples_text(view: JobView) -> str:
    if view.samples is None:
        return ""
    return f"{view.samples}/{view.total_samples}" if view.total_samples else str(view.samples)


def progress_facts(view: JobView, *, percent: bool = True) -> list[str]:
    """What the status knows, most wanted first (a narrow terminal cuts the end).
    ``percent=False`` when a progress bar shows it already."""
    facts = []
    if view.stage:
        facts.append(view.stage)
    facts.extend(view.downloading)
    if view.epoch is not None:
        facts.append(f"epoch {epoch_text(view)}")
    if view.samples is not None:
        facts.append(f"samples {samples_text(view)}")
    if percent and view.percent is not None:
        facts.append(f"{view.percent:.0f}%")
    if view.loss is not None:
        facts.append(f"loss {view.loss:.4g}")
    if view.throughput is not None:
        facts.append(f"{view.throughput:.3g} samples/s")
    if view.eta:
        facts.append(f"eta {view.eta}")
    if view.checkpoints:
        facts.append(f"checkpoints {len(view.checkpoints)} (latest {view.checkpoints[-1].name})")
    if view.exports:
        facts.append(f"exported {len(view.exports)} (latest {view.exports[-1]})")
    if view.reason:
        facts.append(f"reason {view.reason}: {view.message or ''}".rstrip(": "))
    return facts


def progress_line(view: JobView) -> str:
    """One plain line (a log reader's view): the job, its phase and its progress facts."""
    return " ".join([f"{view.namespace}/{view.name}", view.phase, *progress_facts(view)])
