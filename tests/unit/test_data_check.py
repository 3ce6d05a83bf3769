"""The training data check: every bad-data kind instructlab-training rejects (or turns into
nonsense) is named with the file, the 1-based line and what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sft_trainer import data_check
from sft_trainer.data_check import DataProblem

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}
SOURCE = "/data/train.jsonl"


def check(*lines: object, document_column: str | None = None) -> int:
    raw = [(line if isinstance(line, str) else json.dumps(line)).encode() + b"\n" for line in lines]
    return data_check.check_lines(raw, SOURCE, document_column=document_column)


def problem(*lines: object, document_column: str | None = None) -> str:
    with pytest.raises(DataProblem) as error:
        check(*lines, document_column=document_column)
    return str(error.value)


def test_good_data_counts_samples_and_skips_blank_lines() -> None:
    assert check(GOOD, "", "   ", GOOD) == 2


def test_message_variants_the_library_accepts() -> None:
    assert (
        check(
            {
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": None, "reasoning_content": "thinking..."},
                    {"role": "assistant", "tool_calls": [{"name": "f"}]},
                    {"role": "tool", "content": "{}"},
                    {"role": "pretraining", "content": "<|user|>hi<|assistant|>ok"},
                ],
                "unmask": True,
                "id": 1,
            },
            {**GOOD, "id": 2.5},
        )
        == 2
    )


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ((GOOD, {"msgs": []}), 'line 2: no "messages" field'),
        ((GOOD, "{not json"), "line 2: not valid JSON (Expecting property name enclosed in double quotes at column 2)"),
        ((GOOD, '{"messages": []} trailing'), "line 2: not valid JSON (Extra data at column 18)"),
        (("[1, 2]",), "line 1: is a list, not a JSON object (the data must be JSON Lines: one object per line)"),
        (('"text"',), "line 1: is a string, not a JSON object (the data must be JSON Lines: one object per line)"),
        (({"messages": "hi"},), 'line 1: "messages" is a string, not a list'),
        (({"messages": []},), 'line 1: "messages" is empty'),
        (({"messages": ["hi"]},), "line 1: messages[0] is a string, not an object"),
        (({"messages": [{"content": "x"}]},), 'line 1: messages[0] has no "role"'),
        (({"messages": [{"role": 3, "content": "x"}]},), "line 1: messages[0].role is a number, not a string"),
        (
            ({"messages": [{"role": "user", "content": "x"}, {"role": "asistant", "content": "y"}]},),
            'line 1: messages[1] has unknown role "asistant" (known: system, developer, user, '
            "assistant, tool, tool_response, ipython, function, documents, available_tools, "
            "pretraining)",
        ),
        (({"messages": [{"role": "user"}]},), 'line 1: messages[0] (user) has no "content"'),
        (({"messages": [{"role": "user", "content": None}]},), 'line 1: messages[0] (user) has no "content"'),
        (({"messages": [{"role": "user", "content": 5}]},), "line 1: messages[0].content is a number, not a string"),
        (
            ({"messages": [{"role": "user", "content": [{"type": "text"}]}]},),
            "line 1: messages[0].content is a list, not a string",
        ),
        (({**GOOD, "unmask": "yes"},), 'line 1: "unmask" is a string, not true or false'),
        (
            ({**GOOD, "id": 1}, {**GOOD, "id": "two"}),
            "line 2: id is a string here but a number on line 1 (a field must have one JSON type in every line)",
        ),
        (
            (
                {"messages": [{"role": "user", "content": "x", "weight": 1}]},
                {"messages": [{"role": "user", "content": "x", "weight": "high"}]},
            ),
            "line 2: messages[].weight is a string here but a number on line 1 (a field must have "
            "one JSON type in every line)",
        ),
        (
            ({**GOOD, "tags": [1, "a"]},),
            "line 1: tags[] is a string here but a number on this line (a field must have one JSON type in every line)",
        ),
    ],
)
def test_each_problem_names_the_file_line_and_what_is_wrong(lines, expected) -> None:
    assert problem(*lines) == f"{SOURCE} {expected}"


def test_null_goes_with_any_type() -> None:
    assert check({**GOOD, "id": None}, {**GOOD, "id": "a"}, {**GOOD, "id": None}) == 3


def test_empty_file_and_blank_lines_only() -> None:
    assert problem() == f"{SOURCE}: no sample (the file is empty or has only blank lines)"
    assert problem("", " ") == f"{SOURCE}: no sample (the file is empty or has only blank lines)"


def test_not_utf8() -> None:
    with pytest.raises(DataProblem) as error:
        data_check.check_lines([json.dumps(GOOD).encode(), b'{"a": "\xff"}'], SOURCE)
    assert str(error.value) == f"{SOURCE} line 2: not UTF-8 (byte 8)"


def test_pretraining_documents() -> None:
    assert check({"document": "text"}, {"document": "more"}, document_column="document") == 2
    assert problem({"document": "a"}, {"text": "b"}, document_column="document") == (
        f'{SOURCE} line 2: no "document" field (pretraining_config.document_column_name)'
    )
    assert problem({"document": ["a"]}, document_column="document") == (
        f'{SOURCE} line 1: "document" is a list, not a string'
    )


def test_check_file_streams_a_real_file(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps({"msgs": 1}) + "\n")
    with pytest.raises(DataProblem) as error:
        data_check.check_file(path)
    assert str(error.value) == f'{path} line 2: no "messages" field'
    assert (error.value.line, error.value.problem) == (2, 'no "messages" field')
