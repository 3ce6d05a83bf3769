"""How our objects look in the Kubernetes API: camelCase models and RFC 3339 times.

Shared by the SFTJob models and the reporter's progress summary (which the models embed, so it
cannot import them).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Annotated, Any, overload

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict
from pydantic.alias_generators import to_camel

# The largest integer a status may hold: 2^53 - 1, within int64 (the API server refuses a status
# patch holding a larger integer, whole) and read exactly by every JSON reader. Not 2^63 - 1: the
# API server reads a schema's maximum as a float64 and converts it to int64 to compare, and
# 2^63 - 1 rounds to 2^63, which wraps to -2^63: every integer was refused (1.20 API server).
MAX_API_INT = 2**53 - 1
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are errors, not ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", use_enum_values=False)

    def to_api(self) -> dict[str, Any]:
        """The object as the Kubernetes API spells it (camelCase, unset optionals left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


@overload
def rfc3339(moment: float | datetime) -> str: ...
@overload
def rfc3339(moment: None) -> None: ...
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


def _api_date_time(stamp: str) -> str:
    # What rfc3339 writes (a subset of what the API server accepts as date-time, and what
    # parse_rfc3339 reads back), and a real date: no month 13.
    try:
        if _RFC3339.fullmatch(stamp):
            parse_rfc3339(stamp)
            return stamp
    except ValueError:
        pass
    raise ValueError("not a date-time as the API writes it (YYYY-MM-DDTHH:MM:SSZ, a real date, UTC)")


# Types of the values a job's own pods report (status.progress, from its progress ConfigMap):
# strict (a string is no number, a number no flag), bounded so the API server takes them; the
# CRD's schema is generated from them, so its bounds are these.
Count = Annotated[int, Strict(), Field(ge=0, le=MAX_API_INT)]
Finite = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Flag = Annotated[bool, Strict()]
DateTime = Annotated[str, Strict(), AfterValidator(_api_date_time), Field(json_schema_extra={"format": "date-time"})]
