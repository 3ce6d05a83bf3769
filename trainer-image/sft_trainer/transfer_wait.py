"""Every rank, before anything else: wait for the transfer sidecar's downloads (and restore).

A source is ready when its COMPLETE.json names the same URI and pod 0's sidecar reports it Done
in TRANSFERS.json (the sidecar marks every source Pending before its first network call, so an
earlier run's report does not let a rank read a snapshot the sidecar is about to replace). With
``export.restore``, RESTORE_DONE_FILE must exist too. The wait is bounded by the sidecar's
heartbeat, not by a total: as long as TRANSFERS.json keeps changing (``updatedAt``, refreshed
every few seconds while it fetches) a 500 GB download may take hours; no change for
``stall_timeout`` seconds (a dead or missing sidecar) is exit 4. A source the sidecar reports
Failed is exit 2 with its line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from sft_core import sources
from sft_core.sources import DownloadState, SourceManifest

from .errors import ConfigError, LauncherError, PeerUnavailable
from .transfer import config as transfer_config
from .transfer.state import read as read_state

log = logging.getLogger("sft_trainer")

STALL_TIMEOUT_SECONDS = 600.0
POLL_SECONDS = 1.0


class SourceFailed(LauncherError):
    """The sidecar reported a permanent failure: its line is the message, exit 2."""

    exit_code = ConfigError.exit_code


def manifest_matches(path: Path, uri: str) -> bool:
    try:
        return SourceManifest.model_validate_json(path.read_bytes()).uri == uri
    except (OSError, ValueError):
        return False


def pending(config: transfer_config.TransferConfig, state) -> list[str]:
    """What is still missing (URIs; "restore" for the restore), given the sidecar's report."""
    done = {d.source for d in (state.downloads if state else []) if d.state == DownloadState.DONE}
    missing = [
        entry.uri
        for entry in config.sources
        if entry.uri not in done
        or not manifest_matches(config.source_cache_root / entry.cache_key / sources.SOURCE_MANIFEST_FILE, entry.uri)
    ]
    if (
        config.export is not None
        and config.export.restore
        and not (config.ckpt_dir / sources.RESTORE_DONE_FILE).exists()
    ):
        missing.append("restore")
    return missing


def wait_for_transfers(
    raw_config: dict,
    *,
    stall_timeout: float = STALL_TIMEOUT_SECONDS,
    poll: float = POLL_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    try:
        config = transfer_config.parse(raw_config)
    except transfer_config.ConfigProblem as problem:
        field, _, what = str(problem).partition(": ")
        raise ConfigError(field, what) from None
    if not config.sources and not (config.export is not None and config.export.restore):
        return
    state_path = config.ckpt_dir / sources.TRANSFER_STATE_FILE
    last_seen: str | None = None
    last_change = clock()
    said = False
    while True:
        state = read_state(state_path)
        missing = pending(config, state)
        if not missing:
            if said:
                log.info("the transfer sidecar's downloads are complete")
            return
        for download in state.downloads if state else []:
            if download.state == DownloadState.FAILED:
                raise SourceFailed(download.error or f"{download.field} ({download.source}): failed")
        if state is not None and state.updated_at != last_seen:
            last_seen, last_change = state.updated_at, clock()
        if clock() - last_change > stall_timeout:
            raise PeerUnavailable(
                f"{', '.join(missing)}: the transfer sidecar (container transfer of pod 0) has not reported "
                f"for {stall_timeout:g}s; no complete download under {config.cache_root} "
                f"({sources.TRANSFER_STATE_FILE} under {config.ckpt_dir})"
            )
        if not said:
            log.info("waiting for the transfer sidecar: %s", ", ".join(missing))
            said = True
        sleep(poll)
