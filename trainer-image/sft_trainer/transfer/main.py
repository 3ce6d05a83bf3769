"""``python -m sft_trainer.transfer``: the transfer sidecar's entry point (see __init__).

Exit codes: 0 after SIGTERM; 2 (contract.EXIT_BAD_CONFIG) when retrying cannot help (the one
line names the field and the source); 1 after a transient failure outlasted its retries (the
kubelet restarts the container, which resumes). Credentials are read from the environment by
the clients themselves and never printed: every log line and message is also redacted.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path

from sft_core import contract

from .. import termination
from . import outcome
from .config import ConfigProblem, load
from .fetch import Fetcher, FetchFailed
from .state import StateWriter

log = logging.getLogger("sft_trainer.transfer")


class Stopped(BaseException):
    """SIGTERM: stop where we are (partial files are kept and resumed next time)."""


class _Redact(logging.Filter):
    def __init__(self, secrets: list[str]):
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg = outcome.redact(record.getMessage(), self.secrets)
            record.args = ()
        return True


def _logging(secrets: list[str]) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s sft-transfer %(levelname)s %(message)s"))
    handler.addFilter(_Redact(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "urllib3", "huggingface_hub", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(env: dict[str, str], stop: threading.Event) -> tuple[int, str]:
    pod = env.get(contract.ENV_POD_NAME, "")
    try:
        rank = contract.node_rank_from_pod_name(pod)
    except ValueError as error:
        return contract.EXIT_BAD_CONFIG, str(error)
    if rank != 0:
        log.info("node %d: nothing to transfer (pod 0 does); idle until SIGTERM", rank)
        stop.wait()
        return contract.EXIT_OK, "idle: node 0 transfers"
    try:
        config = load(Path(env.get(contract.ENV_CONFIG_PATH) or contract.CONFIG_PATH))
    except ConfigProblem as problem:
        return contract.EXIT_BAD_CONFIG, str(problem)
    state = StateWriter(config.ckpt_dir)
    # First, before any network: every source Pending, so nobody reads an earlier run's Done.
    indices = [state.add_download(entry.field, entry.uri) for entry in config.sources]
    restore_index = (
        state.add_download("spec.export.uri", config.export.uri)
        if config.export is not None and config.export.restore
        else None
    )
    state.write()
    state.start_heartbeat()
    try:
        if config.sources:
            Fetcher(config, state, env, stop).run(indices)
        exporter = None
        if config.export is not None:
            from .export import Exporter

            exporter = Exporter(config.export, config.ckpt_dir, state, env, stop)
        if restore_index is not None:
            code, message = _restore(exporter, state, restore_index, env, stop)
            if code != contract.EXIT_OK:
                return code, message
    except FetchFailed as failed:
        return failed.exit_code, failed.message
    finally:
        state.stop_heartbeat()
    state.write()
    if exporter is not None and config.export is not None:  # an exporter: there is an export
        log.info("exporting complete checkpoints of %s to %s", config.ckpt_dir, config.export.uri)
        exporter.run()
        return contract.EXIT_OK, "stopped: exports up to date or redone next time"
    log.info("sources ready; idle until SIGTERM")
    stop.wait()
    return contract.EXIT_OK, "stopped"


def _restore(exporter, state: StateWriter, index: int, env, stop: threading.Event) -> tuple[int, str]:
    from sft_core.sources import DownloadState

    uri = exporter.export.uri
    attempt = 0
    while True:
        attempt += 1
        try:
            state.update_download(index, state=DownloadState.DOWNLOADING)
            restored = exporter.restore()
            state.update_download(index, state=DownloadState.DONE, revision=restored, error=None)
            return contract.EXIT_OK, ""
        except Exception as error:
            failure = error if isinstance(error, outcome.TransferFailure) else exporter._classify(error)
            if failure is None:
                raise
            text = outcome.line("spec.export.uri", uri, f"restore: {failure.problem}")
            if isinstance(failure, outcome.Permanent):
                state.update_download(index, state=DownloadState.FAILED, error=text)
                return failure.exit_code, text
            if attempt >= outcome.MAX_ATTEMPTS:
                state.update_download(index, error=text)
                return outcome.Transient.exit_code, f"{text} ({attempt} attempts)"
            delay = outcome.backoff_seconds(attempt)
            state.update_download(index, error=outcome.retry_note(text, attempt, delay))
            stop.wait(delay)


def main(argv: list[str] | None = None) -> int:
    del argv  # configured by env and the config file only
    env = dict(os.environ)
    secrets = outcome.secret_values(env)
    _logging(secrets)
    stop = threading.Event()

    def on_term(signum, _frame) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        already = stop.is_set()
        stop.set()
        if not already:
            raise Stopped()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_term)
    message_path = termination.path_from_env(env)
    try:
        code, message = run(env, stop)
    except Stopped:
        code, message = contract.EXIT_OK, "stopped by SIGTERM; a restart resumes"
    except Exception as error:  # a bug: say what and where; the traceback is in the log
        log.exception("transfer sidecar crashed")
        code, message = contract.EXIT_TRAINING_FAILED, termination.describe_crash(error)
    message = outcome.redact(message, secrets)
    if code != contract.EXIT_OK:
        log.error("%s (exit %d)", message, code)
    termination.write(message, message_path)
    return code
