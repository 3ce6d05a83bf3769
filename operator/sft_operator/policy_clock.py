"""The run-policy clock: one loop for the whole operator that hands each job the clock must look
at (deadline, start-up timeout, stall, time to live) to a check, every POLICY_INTERVAL_S.

One clock, not a kopf timer per job: kopf puts a finalizer on every object with a timer (a write
per job, and deleting a job would wait for the operator). handlers.start_policy_clock runs it in
kopf's event loop; the checks run in threads (they call the API), with kopf's context (Events).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
from collections.abc import Callable
from typing import Any

import kopf

from sft_models.models import Phase
from sft_operator import leader_gates
from sft_operator.indexes import index_entry

log = logging.getLogger("sft_operator")
# How often the clock-driven policies are checked per job: their precision, and a few
# milliseconds of CPU per live job each time.
POLICY_INTERVAL_S = float(os.environ.get("SFT_POLICY_INTERVAL_S") or 30.0)  # tests shorten it


def needs_the_clock(body: dict[str, Any]) -> bool:
    """Jobs the clock must look at: every live one (start-up timeout, deadline, stall), and a
    finished one only when it has a time to live."""
    phase = (body.get("status") or {}).get("phase")
    return phase not in (Phase.SUCCEEDED.value, Phase.FAILED.value) or (
        (body.get("spec") or {}).get("ttlSecondsAfterFinished") is not None
    )


async def tick(jobs_by_name: kopf.Index[Any, Any], check: Callable[[dict[str, Any]], None]) -> None:
    """Forever: while this replica leads, ``check`` a copy of each live job's body that needs
    the clock. A check that fails is logged; the job is checked again at the next tick."""
    while True:
        await asyncio.sleep(POLICY_INTERVAL_S)
        if not leader_gates.leading():  # a standby's indexes are empty; a deposed leader exits
            continue
        for key in list(jobs_by_name):
            body = index_entry(jobs_by_name, key)
            if body is None or body["metadata"].get("deletionTimestamp") or not needs_the_clock(body):
                continue
            try:
                await asyncio.to_thread(check, copy.deepcopy(body))
            except Exception:  # noqa: BLE001 - one job's trouble must not stop the clock
                log.exception("%s/%s: the run-policy check failed; retried in %.0f s", *key, POLICY_INTERVAL_S)
