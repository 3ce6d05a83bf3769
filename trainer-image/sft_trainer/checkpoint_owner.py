"""The launcher's side of checkpoint ownership (sft_core.ownership decides).

Every node checks the directory before it reads or writes anything there, and refuses one that
holds another job's training (exit 2: the job is Failed, ConfigRejected, with the message);
node 0 then records this job as the owner (or the adoption) before anything else is written.
Retention deletes only full states the owner lineage wrote.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from sft_core import checkpoints, ownership
from sft_core.ownership import Action, Decision, JobIdentity

from .errors import ConfigError
from .launch_config import LauncherConfig

log = logging.getLogger(__name__)

REFUSAL_FIELD = "spec.checkpoints"


def identity(config: LauncherConfig) -> JobIdentity | None:
    if config.job_uid is None:
        return None
    return JobIdentity(
        uid=config.job_uid,
        namespace=config.namespace,
        name=config.job_name,
        training_fields=dict(config.training_fields),
    )


def check(root: Path, config: LauncherConfig) -> Decision | None:
    """What this job may do with ``root``; raises ConfigError (exit 2) when it may not use it.
    None: the config names no job uid, nothing is checked."""
    me = identity(config)
    if me is None:
        log.warning("the config has no %s: checkpoint ownership is neither checked nor recorded", "jobUid")
        return None
    record, unreadable = ownership.read_owner_record(root)
    output = ownership.scan_output(root) if Path(root).is_dir() else []
    decision = ownership.decide(
        record, unreadable, output, me, adopt_existing=config.adopt_existing_checkpoints, directory=str(root)
    )
    if decision.action is Action.REFUSE:
        raise ConfigError(REFUSAL_FIELD, decision.message)
    return decision


def record(root: Path, config: LauncherConfig, decision: Decision | None, *, now: Callable[[], datetime]) -> None:
    """Node 0: write the owner record a CLAIM or ADOPT decision calls for (atomically; the
    previous owners kept, an unreadable record moved to set-aside/)."""
    me = identity(config)
    if me is None or decision is None or decision.action not in (Action.CLAIM, Action.ADOPT):
        return
    current, unreadable = ownership.read_owner_record(root)
    if unreadable is not None:
        moved = ownership.set_aside_unreadable_record(root, now())
        log.warning("the unreadable owner record was moved to %s", moved)
    new = ownership.recorded(current, me, decision, ownership.volume_now(root))
    ownership.write_owner_record(root, new)
    if decision.action is Action.ADOPT:
        level = logging.INFO if decision.acquired is ownership.Acquired.SAME_TRAINING_FIELDS else logging.WARNING
        log.log(level, "%s", decision.message)
    else:
        log.info("recorded %s as the owner of %s", me.uid, root)


def retention_filter(root: Path, config: LauncherConfig) -> Callable[[checkpoints.FullState], bool] | None:
    """Which full states retention may delete: those the owner lineage wrote (None: any, when
    ownership is not recorded). The record does not change while this launcher runs."""
    if config.job_uid is None:
        return None
    owner_record, _ = ownership.read_owner_record(root)
    return ownership.retention_may_delete(owner_record, lambda state: checkpoints.full_state_written_at(root, state))
