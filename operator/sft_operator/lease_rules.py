"""The pure rules of leader election (leadership.py runs them): the timings and what they must
satisfy, what a Lease says, what a replica does with the Lease it read, and the spec it writes.

Client-go's rules: a standby takes the Lease over only once it has seen the same record for a
whole ``leaseDurationSeconds`` (timed by its own clock), or once the holder released it.
"""

from __future__ import annotations

import datetime
import enum
from dataclasses import dataclass
from typing import Any

# The standby leads within duration + retry (+ kopf's listing) of the leader's death: ~10 s.
DEFAULT_DURATION_S = 8.0
DEFAULT_RENEW_DEADLINE_S = 5.0
DEFAULT_RETRY_PERIOD_S = 1.0


class LeadershipError(ValueError):
    """A leader-election setting that cannot work, naming the flag."""


@dataclass(frozen=True)
class Timings:
    duration_s: float = DEFAULT_DURATION_S
    renew_deadline_s: float = DEFAULT_RENEW_DEADLINE_S
    retry_period_s: float = DEFAULT_RETRY_PERIOD_S

    def __post_init__(self) -> None:
        if not 0 < self.retry_period_s < self.renew_deadline_s < self.duration_s:
            raise LeadershipError(
                "leader election needs 0 < retry period < renew deadline < lease duration "
                f"(got {self.retry_period_s}, {self.renew_deadline_s}, {self.duration_s}): a leader must "
                "stop before a standby may take over"
            )


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease says, and the resourceVersion to replace it with."""

    holder: str
    duration_s: float
    transitions: int
    acquire_time: str | None
    resource_version: str

    @classmethod
    def of(cls, lease: dict[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        return cls(
            holder=spec.get("holderIdentity") or "",
            duration_s=float(spec.get("leaseDurationSeconds") or DEFAULT_DURATION_S),
            transitions=int(spec.get("leaseTransitions") or 0),
            acquire_time=spec.get("acquireTime"),
            resource_version=lease["metadata"]["resourceVersion"],
        )


class Step(enum.Enum):
    CREATE = "create"  # no Lease yet
    RENEW = "renew"  # ours
    TAKE_OVER = "take over"  # released, or not renewed for a whole lease duration
    WAIT = "wait"  # another replica leads


def next_step(record: LeaseRecord | None, identity: str, unchanged_for_s: float) -> Step:
    """What this replica does with the Lease as read (pure). ``unchanged_for_s``: how long this
    replica has seen this very record (its resourceVersion), by its own clock."""
    if record is None:
        return Step.CREATE
    if record.holder == identity:
        return Step.RENEW
    if not record.holder or unchanged_for_s >= record.duration_s:
        return Step.TAKE_OVER
    return Step.WAIT


def micro_time(at: datetime.datetime) -> str:
    """A Lease's MicroTime (RFC 3339, microseconds, UTC)."""
    return at.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_spec(
    identity: str, duration_s: float, now: datetime.datetime, record: LeaseRecord | None, step: Step
) -> dict[str, Any]:
    """The Lease's spec this replica writes for ``step`` (pure)."""
    renewing = step is Step.RENEW and record is not None
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": max(1, round(duration_s)),
        "acquireTime": record.acquire_time if renewing and record is not None else micro_time(now),
        "renewTime": micro_time(now),
        "leaseTransitions": (record.transitions if renewing else record.transitions + 1) if record else 0,
    }
