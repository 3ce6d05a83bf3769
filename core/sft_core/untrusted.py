"""Values the operator does not trust, checked field by field against a typed model.

A job's own pods write its progress ConfigMap (the reporter, next to a model's remote code and the
user's script) and the checkpoint volume it summarizes, so any value there may be garbage. The
API server refuses a status patch holding a single value outside the status schema, and with it
the phase, the conditions and every policy that writes status. So each value is checked against
the model the schema is generated from (same types, same bounds), and one that fails is dropped
alone: a field goes back to its default, a list item is left out, a list over its bound goes
whole; only input that is not an object at all is refused whole. Pure: no I/O.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)
# Each round drops what failed; what is left fails again only below a dropped level (an item
# whose required field failed). Nesting is shallow, so a few rounds always settle.
MAX_ROUNDS = 8
VALUE_PREVIEW = 48  # characters of a dropped value shown in its description


@dataclass(frozen=True)
class DroppedValue:
    """Values that failed the model under one field, named as the schema names it."""

    key: str  # list positions as []: "checkpoints[].samples"; "" for the input as a whole
    path: str  # the first value dropped: "checkpoints[3].samples"
    problem: str  # pydantic's words: "Input should be less than or equal to 9223372036854775807"
    value: str  # a short rendering of that value
    count: int = 1  # values dropped under this key

    def describe(self, prefix: str) -> str:
        where = f"{prefix}.{self.path}" if self.path else prefix
        text = f"{where} = {self.value}: {self.problem}"
        if self.count > 1:
            text += f" ({self.count} values under {prefix}.{self.key} dropped)"
        return text


@dataclass(frozen=True)
class Checked(Generic[M]):
    """What passed (None: nothing usable) and what was dropped on the way."""

    value: M | None
    dropped: tuple[DroppedValue, ...] = ()


def validate_dropping(model: type[M], data: Any) -> Checked[M]:
    """``data`` (JSON-like, not shared: it is changed) as a ``model``, each value that fails
    dropped at the nearest level that may be left out."""
    dropped: dict[str, DroppedValue] = {}
    for _ in range(MAX_ROUNDS):
        try:
            return Checked(model.model_validate(data), tuple(dropped.values()))
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
        points = set()
        for error in errors:
            loc = tuple(error["loc"])
            named = _named(model, loc)
            key = _render(named, indices=False)
            seen = dropped.get(key)
            if seen is None:
                problem = error["msg"].removeprefix("Value error, ")
                dropped[key] = DroppedValue(key, _render(named, indices=True), problem, preview(error.get("input")))
            else:
                dropped[key] = DroppedValue(seen.key, seen.path, seen.problem, seen.value, seen.count + 1)
            point = _removal_point(model, loc)
            if point is None:  # nothing here may be left out: the input as a whole is unusable
                return Checked(None, tuple(dropped.values()))
            points.add(point)
        # Deepest and last first: removing an item never shifts one still to be removed.
        for point in sorted(points, reverse=True):
            _remove(data, point)
    return Checked(None, tuple(dropped.values()))


def preview(value: Any) -> str:
    """A short, printable rendering of a value (a huge list is not printed whole)."""
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} items"
    if isinstance(value, dict):
        return f"an object of {len(value)} keys"
    text = repr(value)
    return text if len(text) <= VALUE_PREVIEW else text[: VALUE_PREVIEW - 3] + "..."


def _render(loc: tuple[Any, ...], *, indices: bool) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]" if indices else "[]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _named(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """``loc`` with each field as the API names it (its alias), whichever name the input used."""
    out = []
    annotation: Any = model
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(part, int):
            annotation = typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else None
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel) and _field(annotation, part):
            info = _field(annotation, part)
            part, annotation = info.alias or part, info.annotation
        else:
            annotation = None
        out.append(part)
    return tuple(out)


def _unwrap(annotation: Any) -> Any:
    """X from Annotated[X, ...] and X | None."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            options = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(options) != 1:
                return annotation
            annotation = options[0]
        else:
            return annotation


def _field(model: type[BaseModel], key: str) -> Any:
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return info
    return None


def _removal_point(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The deepest prefix of ``loc`` that may be left out: an optional field (it takes its
    default) or a list item. None when there is none (the input itself failed)."""
    best = None
    annotation: Any = model
    for depth, part in enumerate(loc):
        annotation = _unwrap(annotation)
        if isinstance(part, int):
            if typing.get_origin(annotation) is not list:
                break
            best = loc[: depth + 1]
            annotation = typing.get_args(annotation)[0]
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            info = _field(annotation, part)
            if info is None:
                break
            if not info.is_required():
                best = loc[: depth + 1]
            annotation = info.annotation
        else:
            break
    return best


def _remove(data: Any, point: tuple[Any, ...]) -> None:
    try:
        for part in point[:-1]:
            data = data[part]
        del data[point[-1]]
    except (KeyError, IndexError, TypeError):
        pass  # already gone with its parent
