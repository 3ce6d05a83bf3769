"""Process the training data once per job: node 0 processes, the other nodes wait for its marker.

instructlab-training would process data on every node inside run_training, all racing on the
same files of a shared volume. Node 0 processes into data_output_dir and then writes the
DATA_READY marker (atomically, after data.jsonl is complete); the others wait for a marker whose
fingerprint matches the inputs they were given, then every node runs with process_data=False.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from sft_operator import checkpoints, contract

from .errors import ConfigError, PeerUnavailable

log = logging.getLogger(__name__)

FINGERPRINT_ARGS = ("data_path", "model_path", "max_seq_len", "chat_tmpl_path",
                    "use_legacy_tmpl", "pretraining_config")


def data_fingerprint(args: dict, data_size: int, data_mtime_ns: int, library_version: str) -> str:
    """Identifies the processed data: any change of inputs means processing again."""
    inputs = {key: args.get(key) for key in FINGERPRINT_ARGS}
    inputs.update(data_size=data_size, data_mtime_ns=data_mtime_ns, library=library_version)
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def fingerprint_for(training_args) -> str:
    from instructlab.training import _version

    stat = Path(training_args.data_path).stat()
    return data_fingerprint(training_args.model_dump(mode="json"), stat.st_size,
                            stat.st_mtime_ns, _version.version)


def count_samples(data_file: Path) -> int:
    with open(data_file, "rb") as handle:
        return sum(1 for line in handle if line.strip())


def _process(training_args) -> None:
    import instructlab.training.data_process as dp
    import tqdm

    # datasets forks its worker pool from this process; tqdm's monitor thread, which takes
    # tqdm's locks every few seconds, must not be mid-lock at a fork (workers would inherit the
    # lock held, forever). Progress bars still draw; only the stall monitor is off.
    tqdm.tqdm.monitor_interval = 0

    field = f"{contract.CONFIG_KEY_TRAINING_ARGS}.data_path"
    try:
        if training_args.pretraining_config is not None:
            dp.process_documents_for_pretraining(
                data_path=training_args.data_path,
                data_output_path=training_args.data_output_dir,
                model_path=training_args.model_path,
                num_cpu_procs=training_args.data_process_num_cpu_procs,
                document_column_name=training_args.pretraining_config.document_column_name,
            )
        else:
            dp.process_data(
                data_output_path=training_args.data_output_dir,
                model_path=training_args.model_path,
                data_path=training_args.data_path,
                max_seq_len=training_args.max_seq_len,
                chat_tmpl_path=training_args.chat_tmpl_path,
                num_cpu_procs=training_args.data_process_num_cpu_procs,
            )
    except (ValueError, RuntimeError, KeyError, TypeError) as error:
        # Upstream raises these for malformed, empty or all-too-long data.
        raise ConfigError(field, f"data processing failed: {error}") from error


def prepare_on_node0(root: Path, training_args, *, now: Callable[[], datetime]
                     ) -> checkpoints.DataReadyMarker:
    fingerprint = fingerprint_for(training_args)
    data_file = Path(training_args.data_output_dir) / checkpoints.PROCESSED_DATA_FILE
    existing = checkpoints.read_data_ready(root)
    if existing and existing.fingerprint == fingerprint and data_file.is_file():
        log.info("processed data is ready (%d samples), not processing again",
                 existing.num_samples)
        return existing
    # Nodes > 0 must not take the old marker for the new data.
    checkpoints.clear_data_ready(root)
    log.info("processing %s into %s", training_args.data_path, training_args.data_output_dir)
    _process(training_args)
    num_samples = count_samples(data_file) if data_file.is_file() else 0
    if num_samples == 0:
        raise ConfigError(f"{contract.CONFIG_KEY_TRAINING_ARGS}.data_path",
                          f"no usable sample in {training_args.data_path} after processing "
                          f"(samples need 20 to max_seq_len={training_args.max_seq_len} tokens)")
    marker = checkpoints.DataReadyMarker(fingerprint=fingerprint,
                                         data_dir=str(training_args.data_output_dir),
                                         num_samples=num_samples, created_at=now())
    checkpoints.write_data_ready(root, marker)
    log.info("processed data ready: %d samples", num_samples)
    return marker


def wait_on_other_node(root: Path, training_args, *, timeout: float,
                       sleep: Callable[[float], None] = time.sleep,
                       monotonic: Callable[[], float] = time.monotonic
                       ) -> checkpoints.DataReadyMarker:
    fingerprint = fingerprint_for(training_args)
    deadline = monotonic() + timeout
    log.info("waiting up to %.0fs for node 0 to process the data", timeout)
    while True:
        marker = checkpoints.read_data_ready(root)
        if marker is not None and marker.fingerprint == fingerprint:
            data_file = Path(training_args.data_output_dir) / checkpoints.PROCESSED_DATA_FILE
            if not data_file.is_file():
                raise ConfigError(f"{contract.CONFIG_KEY_TRAINING_ARGS}.data_output_dir",
                                  f"node 0 processed the data but {data_file} is not visible "
                                  "here: it must be on the volume all nodes share")
            return marker
        if monotonic() >= deadline:
            raise PeerUnavailable(
                f"node 0 did not finish processing the data within {timeout:.0f}s "
                f"({contract.CONFIG_KEY_DATA_WAIT_TIMEOUT}); no matching "
                f"{checkpoints.DATA_READY_FILE} under {root}")
        sleep(1.0)


def prepare_data(root: Path, training_args, node_rank: int, *, timeout: float,
                 now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
                 ) -> checkpoints.DataReadyMarker:
    if node_rank == 0:
        return prepare_on_node0(root, training_args, now=now)
    return wait_on_other_node(root, training_args, timeout=timeout)
