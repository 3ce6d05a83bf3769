"""The progress reporter: a sidecar in each training pod that publishes what the volume says.

Only the pod of ordinal 0 publishes (all pods share one checkpoint volume, and the template is
the same for every pod); the others wait for SIGTERM. It scans the checkpoint directory every
few seconds and writes a compact TrainingProgress JSON into the job's progress ConfigMap,
which the operator folds into ``status.progress``. Why this shape (see the README):

- no network path from the operator to pods: the sidecar pushes through the API server;
- least privilege: the pod's ServiceAccount may only get/patch that one ConfigMap
  (resourceNames), and the operator stays the only writer of the SFTJob's status;
- bounded API traffic: a publish only when the summary changes, milestones (stage, a new
  checkpoint, epoch) at once, step metrics at most every ``--min-interval`` seconds;
- the status outlives the pods: the operator copies the summary into the SFTJob;
- the trainer's last save is published: told to stop (the pod is deleted: suspend, preemption,
  drain), pod 0's reporter keeps publishing until the trainer has exited (the launcher's
  ``contract.TRAINER_EXITED_FILE`` in the shared pod-state volume), at most the pod's grace period
  less ``SHUTDOWN_MARGIN_S``, then publishes a final summary at once, rate limit or not.

Run as ``python -m sft_reporter`` with the pod's env (contract.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from sft_core import contract, ownership
from sft_core.checkpoints import (
    CheckpointTree,
    MetricsLog,
    StepRecord,
    TotalsRecord,
    metrics_log_path,
    read_metrics_log,
    read_run_records,
    scan_checkpoints,
)
from sft_core.progress import LossHistory, TrainingProgress, check_summary, summarize_progress, summary_fields
from sft_core.sources import read_transfer_state

log = logging.getLogger("sft_reporter.sidecar")

DEFAULT_SCAN_INTERVAL_S = 3.0
DEFAULT_MIN_INTERVAL_S = 15.0
# Kubernetes' default terminationGracePeriodSeconds, when the env does not say.
DEFAULT_TERMINATION_GRACE_S = 30.0
# Left of the grace period for the final scan and publish before the kubelet's SIGKILL.
SHUTDOWN_MARGIN_S = 5.0
# While waiting for the trainer to exit: how often to look for its marker (and scan).
DRAIN_INTERVAL_S = 1.0
FINAL_PUBLISH_ATTEMPTS = 3
# Fields whose change is a milestone a user waits for: published without delay.
MILESTONE_FIELDS = ("stage", "epoch", "checkpoints", "latest_full_state", "num_epochs", "exports", "export_error")


@dataclass
class VolumeReader:
    """Reads the checkpoint volume incrementally: the metrics log from where it left off."""

    ckpt_dir: Path
    data_dir: Path
    num_epochs: int
    # With the job's uid, only a directory the job owns is reported (the launcher records it
    # before it writes anything): a job must never report another job's run as its own.
    job_uid: str | None = None
    _offset: int = 0
    _last_step: StepRecord | None = None
    _last_totals: TotalsRecord | None = None
    # Built as the log is read: changes only with step (and validation) lines, so it adds no
    # publish of its own (step metrics are rate limited).
    _history: LossHistory = field(default_factory=LossHistory)
    # Keys of values the status schema cannot hold (the volume is the job's own: a directory
    # hf_format/samples_<huge>, a metrics line with 2^70 samples), left out of the summary and
    # logged once each; the rest is published as usual.
    _dropped_keys: set[str] = field(default_factory=set)

    def _read_metrics(self) -> None:
        path = metrics_log_path(self.ckpt_dir)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size < self._offset:  # replaced or truncated: read it again from the start
            self._offset, self._last_step, self._last_totals = 0, None, None
            self._history = LossHistory()
        chunk: MetricsLog = read_metrics_log(path, self._offset)
        self._offset = chunk.end_offset
        previous = self._last_step
        for step in chunk.steps:
            self._history.add_step(step)
        for record in chunk.validations:
            if record.samples_seen is None and previous is not None and record.step == previous.step:
                # its step line was the last of the previous read
                record = record.model_copy(update={"samples_seen": previous.samples_seen})
            self._history.add_validation(record)
        if chunk.steps:
            self._last_step = chunk.steps[-1]
        if chunk.totals:
            self._last_totals = chunk.totals[-1]

    def read(self) -> TrainingProgress:
        adopted = None
        if self.job_uid is not None:
            record, _ = ownership.read_owner_record(self.ckpt_dir)
            if record is None or not ownership.owned_by(record, self.job_uid):
                return self._not_yet_owned()
            try:
                adopted = ownership.adoption(record)
            except ValidationError as exc:
                # The owner record is the job's own writing: a value past the status schema's
                # bounds costs the adoption summary, never the rest of the progress.
                if "adoption" not in self._dropped_keys:
                    self._dropped_keys.add("adoption")
                    log.warning(
                        "left out of the summary: progress.adoption: %s",
                        exc.errors()[0]["msg"] if exc.errors() else exc,
                    )
        self._read_metrics()
        transfers = None
        try:
            transfers = read_transfer_state(self.ckpt_dir)
        except ValueError as exc:
            if "transfers" not in self._dropped_keys:
                self._dropped_keys.add("transfers")
                log.warning("left out of the summary: downloads and exports: %s", exc)
        checked = check_summary(
            summary_fields(
                scan_checkpoints(self.ckpt_dir),
                num_epochs=self.num_epochs,
                last_step=self._last_step,
                last_totals=self._last_totals,
                runs=read_run_records(self.ckpt_dir),
                data_dir_exists=self.data_dir.is_dir(),
                loss_history=self._history.points(),
                adoption=adopted,
                transfers=transfers,
            )
        )
        for dropped in checked.dropped:
            if dropped.key not in self._dropped_keys:
                self._dropped_keys.add(dropped.key)
                log.warning("left out of the summary: %s", dropped.describe("progress"))
        return checked.value or TrainingProgress()

    def _not_yet_owned(self) -> TrainingProgress:
        """Before the launcher recorded this job as the owner (or when it refused the directory):
        nothing of the volume is this job's yet."""
        empty = CheckpointTree(
            root=str(self.ckpt_dir),
            hf_checkpoints=[],
            full_states=[],
            stray_full_state_entries=[],
            completion=None,
            data_ready=None,
            samples_per_epoch=None,
        )
        return summarize_progress(
            empty, num_epochs=self.num_epochs, last_step=None, last_totals=None, runs=[], data_dir_exists=False
        )


def milestone_view(progress: TrainingProgress) -> dict[str, Any]:
    dumped = progress.model_dump(mode="json")
    view = {name: dumped[name] for name in MILESTONE_FIELDS}
    # A download's state and error are milestones; its byte count is rate limited like steps.
    view["downloads"] = [(d["field"], d["state"], d["error"]) for d in dumped["downloads"] or []]
    return view


def should_publish(
    published: TrainingProgress | None,
    current: TrainingProgress,
    *,
    seconds_since_publish: float,
    min_interval_s: float,
) -> bool:
    """Publish a milestone at once, other changes (loss, samples) at most every min_interval_s,
    and nothing when nothing changed."""
    if published is None:
        return True
    if current == published:
        return False
    if milestone_view(current) != milestone_view(published):
        return True
    return seconds_since_publish >= min_interval_s


@dataclass
class Publisher:
    """Writes the summary into the job's progress ConfigMap (created by the operator)."""

    namespace: str
    job_name: str
    core_api: Any
    writes: int = field(default=0)

    def publish(self, progress: TrainingProgress) -> None:
        body = {"data": {contract.PROGRESS_KEY: json.dumps(progress.to_api(), sort_keys=True)}}
        self.core_api.patch_namespaced_config_map(contract.progress_configmap_name(self.job_name), self.namespace, body)
        self.writes += 1


def run_loop(
    reader: VolumeReader,
    publish: Callable[[TrainingProgress], None],
    stop: threading.Event,
    *,
    scan_interval_s: float = DEFAULT_SCAN_INTERVAL_S,
    min_interval_s: float = DEFAULT_MIN_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
    trainer_exited: Callable[[], bool] = lambda: True,
    shutdown_wait_s: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Scan, publish when worth it, until ``stop``. Then go on scanning (milestones at once, step
    metrics rate limited) until ``trainer_exited()`` or ``shutdown_wait_s`` has passed, and
    publish a final summary whatever the rate limit, so the trainer's last save (an on-demand
    checkpoint written after SIGTERM, the completion) is never lost to a shutdown."""
    published: TrainingProgress | None = None
    published_at = float("-inf")
    give_up_at: float | None = None
    final_attempts = 0
    while True:
        final = False
        if stop.is_set():
            if give_up_at is None:
                give_up_at = clock() + shutdown_wait_s
                if not trainer_exited():
                    log.info("stopping: publishing until the trainer has exited (at most %.0fs)", shutdown_wait_s)
            if trainer_exited():
                final = True
            elif clock() >= give_up_at:
                log.warning(
                    "the trainer has not exited %.0fs after the stop signal: publishing what the volume says now",
                    shutdown_wait_s,
                )
                final = True
        try:
            current = reader.read()
            now = clock()
            if should_publish(
                published,
                current,
                seconds_since_publish=now - published_at,
                min_interval_s=0.0 if final else min_interval_s,
            ):
                publish(current)
                published, published_at = current, now
        except Exception as exc:  # noqa: BLE001 - a hiccup (API, torn file) must not kill the sidecar
            log.warning("progress not published this round: %s", exc)
            if final:
                final_attempts += 1
                if final_attempts < FINAL_PUBLISH_ATTEMPTS:
                    sleep(DRAIN_INTERVAL_S)
                    continue
        if final:
            return
        if give_up_at is None:
            stop.wait(scan_interval_s)
        else:
            sleep(min(DRAIN_INTERVAL_S, scan_interval_s))


def shutdown_wait_from_env(env: Any) -> float:
    """The pod's grace period (from the env the renderer sets) less the margin for the end."""
    raw = env.get(contract.ENV_TERMINATION_GRACE_SECONDS)
    try:
        grace = float(raw) if raw else DEFAULT_TERMINATION_GRACE_S
    except ValueError:
        log.warning(
            "%s=%r is not a number: assuming %.0fs",
            contract.ENV_TERMINATION_GRACE_SECONDS,
            raw,
            DEFAULT_TERMINATION_GRACE_S,
        )
        grace = DEFAULT_TERMINATION_GRACE_S
    return max(0.0, grace - SHUTDOWN_MARGIN_S)


def trainer_exited_check(env: Any) -> Callable[[], bool]:
    """Whether no trainer runs in this pod: none ever started (an image that cannot be pulled, a
    pod deleted before its trainer ran: waiting the whole grace period for it held every such
    pod 60 s on the real node), or the launcher has written its exit marker. Without the
    pod-state volume (an older pod template) nobody writes one, so the reporter stops at once."""
    directory = env.get(contract.ENV_POD_STATE_DIR)
    if not directory:
        return lambda: True
    running = Path(directory) / contract.TRAINER_RUNNING_FILE
    exited = Path(directory) / contract.TRAINER_EXITED_FILE
    return lambda: not running.exists() or exited.exists()


def _load_config(path: Path) -> dict[str, Any]:
    try:
        config: dict[str, Any] = json.loads(path.read_text())
        return config
    except (OSError, ValueError) as exc:
        raise SystemExit(f"reporter: cannot read the training config {path}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sft_reporter", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.environ.get(contract.ENV_CONFIG_PATH, contract.CONFIG_PATH))
    parser.add_argument("--scan-interval", type=float, default=DEFAULT_SCAN_INTERVAL_S)
    parser.add_argument("--min-interval", type=float, default=DEFAULT_MIN_INTERVAL_S)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s reporter %(levelname)s %(message)s")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    pod_name = os.environ.get(contract.ENV_POD_NAME, "")
    try:
        ordinal = contract.node_rank_from_pod_name(pod_name)
    except ValueError as exc:
        log.error("%s", exc)
        return contract.EXIT_BAD_CONFIG
    if ordinal != 0:
        log.info("pod %s is not ordinal 0: pod 0 reports for the job; idle", pod_name)
        stop.wait()
        return 0

    config = _load_config(Path(args.config))
    training = config[contract.CONFIG_KEY_TRAINING_ARGS]
    reader = VolumeReader(
        ckpt_dir=Path(training["ckpt_output_dir"]),
        data_dir=Path(training["data_output_dir"]),
        num_epochs=int(config[contract.CONFIG_KEY_NUM_EPOCHS]),
        job_uid=config.get(contract.CONFIG_KEY_JOB_UID) or None,
    )
    import kubernetes

    from sft_operator import kubeclient

    publisher = Publisher(
        namespace=config[contract.CONFIG_KEY_NAMESPACE],
        job_name=config[contract.CONFIG_KEY_JOB_NAME],
        core_api=kubernetes.client.CoreV1Api(kubeclient.load_api_client()),
    )
    log.info("reporting %s to ConfigMap %s", reader.ckpt_dir, contract.progress_configmap_name(publisher.job_name))
    run_loop(
        reader,
        publisher.publish,
        stop,
        scan_interval_s=args.scan_interval,
        min_interval_s=args.min_interval,
        trainer_exited=trainer_exited_check(os.environ),
        shutdown_wait_s=shutdown_wait_from_env(os.environ),
    )
    log.info("stopped after %d writes", publisher.writes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
