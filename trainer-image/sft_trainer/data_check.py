"""Check the training data (JSON Lines) before instructlab-training processes it.

The library's own errors do not say where a problem is: a line without ``messages`` ends as a
bare ``KeyError: 'messages'`` or ``TypeError`` from a pool worker, malformed JSON as pyarrow's
"in row 1" (0-based, and counted within a read block, not the file). This module reads the file
once, line by line (constant memory), and stops at the first problem with its 1-based line
number and what is wrong, e.g. ``/data/train.jsonl line 2: no "messages" field``.

Pure: no instructlab, datasets or torch import; the launcher runs it in-process on node 0.

What it checks (each a case the library rejects, or processes into nonsense):

- the file is UTF-8 and has at least one non-blank line (blank lines are skipped, as pyarrow does);
- every line is a JSON object (JSON Lines: a file holding one JSON array is refused);
- chat data: ``messages`` is a non-empty list of objects, each with a ``role`` from ROLES and a
  string ``content`` (``content`` may be absent or null only beside ``reasoning_content``,
  ``thinking`` or ``tool_calls``); ``unmask``, if present, is a boolean;
- pretraining data (``pretraining_config``): the document column holds a string;
- a field has one JSON type in every line (number, string, boolean, array or object; null goes
  with any): pyarrow infers one column type per field and refuses the file otherwise.

What it cannot know without tokenizing: sample lengths (too short or too long for
``max_seq_len``); the launcher reports those after processing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Roles instructlab-training and the chat templates of common models know. "pretraining" is
# instructlab-training's legacy pretraining role. A role outside this set is almost always a
# typo ("asistant"), and a sample whose assistant turn is misnamed trains on nothing.
ROLES = (
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "tool_response",
    "ipython",
    "function",
    "documents",
    "available_tools",
    "pretraining",
)
# A message may leave out content when it carries one of these instead.
CONTENT_ALTERNATIVES = ("reasoning_content", "thinking", "tool_calls")


class DataProblem(ValueError):
    """The first problem found; ``str()`` is the one-line description."""

    def __init__(self, source: str, line: int | None, problem: str):
        self.source = source
        self.line = line
        self.problem = problem
        where = f"{source} line {line}" if line is not None else source
        super().__init__(f"{where}: {problem}")


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _article(kind: str) -> str:
    return {"array": "a list", "object": "an object", "null": "null"}.get(kind, f"a {kind}")


@dataclass
class _Types:
    """The JSON type each field path had where first seen (pyarrow's one-type-per-column rule)."""

    first: dict[str, tuple[str, int]] = field(default_factory=dict)

    def check(self, value: Any, path: str, line: int, problem) -> None:
        kind = _kind(value)
        if kind == "null":
            return
        seen = self.first.setdefault(path, (kind, line))
        if seen[0] != kind:
            where = "on this line" if seen[1] == line else f"on line {seen[1]}"
            raise problem(
                f"{path} is {_article(kind)} here but {_article(seen[0])} {where} "
                "(a field must have one JSON type in every line)"
            )
        if kind == "array":
            for item in value:
                self.check(item, f"{path}[]", line, problem)
        elif kind == "object":
            for key, item in value.items():
                self.check(item, f"{path}.{key}", line, problem)


def _check_messages(sample: dict, problem) -> None:
    if "messages" not in sample:
        raise problem('no "messages" field')
    messages = sample["messages"]
    if not isinstance(messages, list):
        raise problem(f'"messages" is {_article(_kind(messages))}, not a list')
    if not messages:
        raise problem('"messages" is empty')
    for index, message in enumerate(messages):
        name = f"messages[{index}]"
        if not isinstance(message, dict):
            raise problem(f"{name} is {_article(_kind(message))}, not an object")
        if "role" not in message or message["role"] is None:
            raise problem(f'{name} has no "role"')
        role = message["role"]
        if not isinstance(role, str):
            raise problem(f"{name}.role is {_article(_kind(role))}, not a string")
        if role not in ROLES:
            raise problem(f'{name} has unknown role "{role[:40]}" (known: {", ".join(ROLES)})')
        content = message.get("content")
        if content is None:
            if not any(message.get(key) is not None for key in CONTENT_ALTERNATIVES):
                raise problem(f'{name} ({role}) has no "content"')
        elif not isinstance(content, str):
            raise problem(f"{name}.content is {_article(_kind(content))}, not a string")
    if "unmask" in sample and not isinstance(sample["unmask"], (bool, type(None))):
        raise problem(f'"unmask" is {_article(_kind(sample["unmask"]))}, not true or false')


def _check_document(sample: dict, column: str, problem) -> None:
    if column not in sample:
        raise problem(f'no "{column}" field (pretraining_config.document_column_name)')
    if not isinstance(sample[column], str):
        raise problem(f'"{column}" is {_article(_kind(sample[column]))}, not a string')


def check_lines(lines: Iterable[bytes], source: str, *, document_column: str | None = None) -> int:
    """Check JSON Lines; returns the number of samples, or raises DataProblem at the first
    problem. ``document_column``: pretraining data (one document per line) instead of chat."""
    types = _Types()
    samples = 0
    for number, raw in enumerate(lines, start=1):

        def problem(text: str, _number: int = number) -> DataProblem:
            return DataProblem(source, _number, text)

        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise problem(f"not UTF-8 (byte {error.start + 1})") from None
        if not text.strip():
            continue
        try:
            sample = json.loads(text)
        except ValueError as error:
            detail = getattr(error, "msg", str(error))
            column = getattr(error, "colno", None)
            raise problem(f"not valid JSON ({detail}" + (f" at column {column})" if column else ")")) from None
        if not isinstance(sample, dict):
            raise problem(
                f"is {_article(_kind(sample))}, not a JSON object (the data must be JSON Lines: one object per line)"
            )
        if document_column is not None:
            _check_document(sample, document_column, problem)
        else:
            _check_messages(sample, problem)
        for key, value in sample.items():
            types.check(value, key, number, problem)
        samples += 1
    if samples == 0:
        raise DataProblem(source, None, "no sample (the file is empty or has only blank lines)")
    return samples


def check_file(path: Path, *, document_column: str | None = None) -> int:
    """Check a JSON Lines file, streaming; the number of samples or DataProblem."""
    with open(path, "rb") as handle:
        return check_lines(handle, str(path), document_column=document_column)
