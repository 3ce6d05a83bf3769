"""Reading the operator's log in RBAC tests: did anything get refused for lack of permissions?"""

from __future__ import annotations

import re

_RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", re.M)


def refusals(log: str) -> list[str]:
    """The operator's log records (a line and its traceback) that report a refusal for lack of
    permissions: a 403, Forbidden, or kopf's "Not enough permissions". The timestamp is left out
    (its milliseconds may read 403), and so are refusals to create in a namespace being deleted
    (NamespaceTerminating: another test's namespace, not a missing rule)."""
    starts = [m.start() for m in _RECORD_START.finditer(log)] + [len(log)]
    records = [_RECORD_START.sub("", log[a:b], count=1) for a, b in zip(starts, starts[1:])]
    return [
        record.splitlines()[0]
        for record in records
        if ("403" in record or "orbidden" in record or "Not enough permissions" in record)
        and "NamespaceTerminating" not in record
    ]
