"""How our objects look in the Kubernetes API: camelCase models and RFC 3339 times.

Shared by the SFTJob models and the reporter's progress summary (which the models embed, so it
cannot import them).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are errors, not ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", use_enum_values=False
    )

    def to_api(self) -> dict[str, Any]:
        """The object as the Kubernetes API spells it (camelCase, unset optionals left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def rfc3339(moment: float | datetime | None) -> str | None:
    """A time as the API writes it (UTC, whole seconds); a POSIX timestamp or a naive datetime
    is taken as UTC."""
    if moment is None:
        return None
    if isinstance(moment, (int, float)):
        moment = datetime.fromtimestamp(moment, timezone.utc)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(stamp: str) -> datetime:
    """A time the API wrote (as rfc3339 writes it), as an aware datetime."""
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
