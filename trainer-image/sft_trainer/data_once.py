"""Process the training data once per job: node 0 processes, the other nodes wait for its marker.

instructlab-training would process data on every node inside run_training, all racing on the
same files of a shared volume. Node 0 processes into data_output_dir and then writes the
DATA_READY marker (atomically, after data.jsonl is complete); the others wait for a marker whose
fingerprint matches the inputs they were given, then every node runs with process_data=False.

Node 0 first checks the file line by line (data_check: the exact line and problem), then
processes in a child process under a no-progress watchdog (data_watchdog: a stalled pool is
killed and processing retried, it is idempotent).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from sft_core import checkpoints, contract

from . import data_check, data_watchdog
from .errors import ConfigError, PeerUnavailable

log = logging.getLogger(__name__)

FINGERPRINT_ARGS = ("data_path", "model_path", "max_seq_len", "chat_tmpl_path", "use_legacy_tmpl", "pretraining_config")


def data_fingerprint(args: dict, data_size: int, data_mtime_ns: int, library_version: str) -> str:
    """Identifies the processed data: any change of inputs means processing again."""
    inputs = {key: args.get(key) for key in FINGERPRINT_ARGS}
    inputs.update(data_size=data_size, data_mtime_ns=data_mtime_ns, library=library_version)
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def fingerprint_for(training_args) -> str:
    from instructlab.training import _version

    stat = Path(training_args.data_path).stat()
    return data_fingerprint(training_args.model_dump(mode="json"), stat.st_size, stat.st_mtime_ns, _version.version)


def count_samples(data_file: Path) -> int:
    with open(data_file, "rb") as handle:
        return sum(1 for line in handle if line.strip())


# What the watched child runs (data_child imports it by name); tests substitute their own.
PROCESS_TARGET = "sft_trainer.data_once:process_request"
DEFAULT_STALL_TIMEOUT = 300.0
DEFAULT_ATTEMPTS = 3


def _data_field() -> str:
    return f"{contract.CONFIG_KEY_TRAINING_ARGS}.data_path"


def _library_message(error: BaseException) -> str:
    """instructlab-training's error and its root cause on one line, without pyarrow's "in row
    N" (0-based and counted within a read block: not a line number)."""
    messages: list[str] = []
    current: BaseException | None = error
    while current is not None and len(messages) < 8:
        if type(current).__name__ != "RemoteTraceback":
            text = " ".join(str(current).split())
            text = re.sub(r"\s+in row \d+", "", text)
            text = f"{type(current).__name__}: {text}" if text else type(current).__name__
            if text not in messages:
                messages.append(text)
        current = current.__cause__ or current.__context__
    if len(messages) > 1:
        return f"{messages[0]} (cause: {messages[-1]})"
    return messages[0]


def process_request(payload: dict) -> dict:
    """In the watched child (data_child): instructlab-training's data processing."""
    import instructlab.training.data_process as dp

    data_path, max_seq_len = payload["data_path"], payload["max_seq_len"]
    try:
        if payload.get("document_column_name") is not None:
            dp.process_documents_for_pretraining(
                data_path=data_path,
                data_output_path=payload["data_output_dir"],
                model_path=payload["model_path"],
                num_cpu_procs=payload["num_cpu_procs"],
                document_column_name=payload["document_column_name"],
            )
        else:
            dp.process_data(
                data_output_path=payload["data_output_dir"],
                model_path=payload["model_path"],
                data_path=data_path,
                max_seq_len=max_seq_len,
                chat_tmpl_path=payload.get("chat_tmpl_path"),
                num_cpu_procs=payload["num_cpu_procs"],
            )
    except RuntimeError as error:
        if "does not contain any samples containing less than" in str(error):
            raise ConfigError(
                f"{contract.CONFIG_KEY_TRAINING_ARGS}.max_seq_len",
                f"every sample of {data_path} is {max_seq_len} tokens or longer: nothing to train on",
            ) from error
        raise ConfigError(_data_field(), f"{data_path}: data processing failed: {_library_message(error)}") from error
    except (ValueError, KeyError, TypeError) as error:
        # Upstream raises these for data that data_check could not judge.
        raise ConfigError(_data_field(), f"{data_path}: data processing failed: {_library_message(error)}") from error
    return {}


def check_data(training_args) -> int:
    """The cheap line-by-line check (data_check): exact file, line and problem."""
    pretraining = training_args.pretraining_config
    try:
        return data_check.check_file(
            Path(training_args.data_path), document_column=pretraining.document_column_name if pretraining else None
        )
    except data_check.DataProblem as problem:
        raise ConfigError(_data_field(), str(problem)) from None
    except OSError as error:
        raise ConfigError(_data_field(), f"cannot read {training_args.data_path}: {error.strerror or error}") from None


def _process(training_args, *, stall_timeout: float, attempts: int) -> data_watchdog.Supervised:
    pretraining = training_args.pretraining_config
    payload = {
        "data_path": str(training_args.data_path),
        "data_output_dir": str(training_args.data_output_dir),
        "model_path": str(training_args.model_path),
        "max_seq_len": training_args.max_seq_len,
        "chat_tmpl_path": training_args.chat_tmpl_path,
        "num_cpu_procs": training_args.data_process_num_cpu_procs,
        "document_column_name": pretraining.document_column_name if pretraining else None,
    }
    return data_watchdog.run_supervised(PROCESS_TARGET, payload, stall_timeout=stall_timeout, attempts=attempts)


def prepare_on_node0(
    root: Path,
    training_args,
    *,
    now: Callable[[], datetime],
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    attempts: int = DEFAULT_ATTEMPTS,
) -> checkpoints.DataReadyMarker:
    fingerprint = fingerprint_for(training_args)
    data_file = Path(training_args.data_output_dir) / checkpoints.PROCESSED_DATA_FILE
    existing = checkpoints.read_data_ready(root)
    if existing and existing.fingerprint == fingerprint and data_file.is_file():
        log.info("processed data is ready (%d samples), not processing again", existing.num_samples)
        return existing
    # Nodes > 0 must not take the old marker for the new data.
    checkpoints.clear_data_ready(root)
    data_file.unlink(missing_ok=True)  # only this processing's output may be counted
    lines = check_data(training_args)
    log.info("checked %s: %d samples", training_args.data_path, lines)
    log.info("processing %s into %s", training_args.data_path, training_args.data_output_dir)
    _process(training_args, stall_timeout=stall_timeout, attempts=attempts)
    num_samples = count_samples(data_file) if data_file.is_file() else 0
    if num_samples == 0:
        raise ConfigError(
            f"{contract.CONFIG_KEY_TRAINING_ARGS}.data_path",
            f"no usable sample in {training_args.data_path} after processing "
            f"(samples need 20 to max_seq_len={training_args.max_seq_len} tokens)",
        )
    marker = checkpoints.DataReadyMarker(
        fingerprint=fingerprint, data_dir=str(training_args.data_output_dir), num_samples=num_samples, created_at=now()
    )
    checkpoints.write_data_ready(root, marker)
    log.info("processed data ready: %d samples", num_samples)
    return marker


def wait_on_other_node(
    root: Path,
    training_args,
    *,
    timeout: float,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> checkpoints.DataReadyMarker:
    fingerprint = fingerprint_for(training_args)
    deadline = monotonic() + timeout
    log.info("waiting up to %.0fs for node 0 to process the data", timeout)
    while True:
        marker = checkpoints.read_data_ready(root)
        if marker is not None and marker.fingerprint == fingerprint:
            data_file = Path(training_args.data_output_dir) / checkpoints.PROCESSED_DATA_FILE
            if not data_file.is_file():
                raise ConfigError(
                    f"{contract.CONFIG_KEY_TRAINING_ARGS}.data_output_dir",
                    f"node 0 processed the data but {data_file} is not visible "
                    "here: it must be on the volume all nodes share",
                )
            return marker
        if monotonic() >= deadline:
            raise PeerUnavailable(
                f"node 0 did not finish processing the data within {timeout:.0f}s "
                f"({contract.CONFIG_KEY_DATA_WAIT_TIMEOUT}); no matching "
                f"{checkpoints.DATA_READY_FILE} under {root}"
            )
        sleep(1.0)


def prepare_data(
    root: Path,
    training_args,
    node_rank: int,
    *,
    timeout: float,
    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    attempts: int = DEFAULT_ATTEMPTS,
) -> checkpoints.DataReadyMarker:
    if node_rank == 0:
        return prepare_on_node0(root, training_args, now=now, stall_timeout=stall_timeout, attempts=attempts)
    return wait_on_other_node(root, training_args, timeout=timeout)
