"""Remote sources and the export target: the URI grammar, where each lands, and how the spec
refuses what cannot be fetched (naming the field)."""

from __future__ import annotations

from typing import Any

import pytest

from sft_core import contract
from sft_core.sources import (
    Source,
    SourceKind,
    SourceProblem,
    TransferState,
    export_uri_of,
    is_remote,
    parse_export_uri,
    parse_source,
)
from sft_models.models import InvalidSpecError, parse_spec

CACHE = "/checkpoints/.sft-sources"


@pytest.mark.parametrize(
    ("value", "model", "expected"),
    [
        (
            "Qwen/Qwen2.5-7B-Instruct",
            True,
            Source(SourceKind.HF_MODEL, "hf://Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct"),
        ),
        ("gpt2", True, Source(SourceKind.HF_MODEL, "hf://gpt2", "gpt2")),
        ("hf://org/x@main", True, Source(SourceKind.HF_MODEL, "hf://org/x@main", "org/x", "main")),
        ("hf://org/x@refs/pr/1", True, Source(SourceKind.HF_MODEL, "hf://org/x@refs/pr/1", "org/x", "refs/pr/1")),
        (
            "hf://datasets/org/d@v1/train/a.jsonl",
            False,
            Source(SourceKind.HF_DATASET_FILE, "hf://datasets/org/d@v1/train/a.jsonl", "org/d", "v1", "train/a.jsonl"),
        ),
        (
            "hf://datasets/org/d/a.jsonl",
            False,
            Source(SourceKind.HF_DATASET_FILE, "hf://datasets/org/d/a.jsonl", "org/d", None, "a.jsonl"),
        ),
        (
            "s3://bkt/models/llama",
            True,
            Source(SourceKind.S3_PREFIX, "s3://bkt/models/llama/", "bkt", None, "models/llama/"),
        ),
        (
            "s3://bkt//models/llama/",
            True,
            Source(SourceKind.S3_PREFIX, "s3://bkt/models/llama/", "bkt", None, "models/llama/"),
        ),
        ("s3://bkt", True, Source(SourceKind.S3_PREFIX, "s3://bkt/", "bkt", None, "")),
        (
            "s3://bkt/d/train.jsonl",
            False,
            Source(SourceKind.S3_OBJECT, "s3://bkt/d/train.jsonl", "bkt", None, "d/train.jsonl"),
        ),
        (
            "https://h.example/x/train.jsonl",
            False,
            Source(SourceKind.HTTPS_FILE, "https://h.example/x/train.jsonl", "h.example", None, "/x/train.jsonl"),
        ),
    ],
)
def test_a_source_parses_to_its_canonical_form(value: str, model: bool, expected: Source) -> None:
    assert parse_source(value, model=model) == expected


@pytest.mark.parametrize(
    ("value", "model", "message"),
    [
        ("ftp://h/x", True, "'ftp://h/x': scheme ftp:// is not supported (hf://, s3://, https:// or an absolute path)"),
        (
            "hf://datasets/org/d/a.jsonl",
            True,
            "'hf://datasets/org/d/a.jsonl' is a dataset; a model is hf://<org>/<repo>[@<revision>]",
        ),
        (
            "hf://org/x",
            False,
            "'hf://org/x': data from Hugging Face is one file of a dataset: hf://datasets/<org>/<repo>/<file>",
        ),
        ("hf://org/../x", True, "'hf://org/../x': expected hf://<org>/<repo>[@<revision>]"),
        ("./model", True, "'./model': expected a Hugging Face id (<org>/<repo>) or an absolute path"),
        (
            "train.jsonl",
            False,
            "'train.jsonl' is neither an absolute path in the pod nor a URI (hf://datasets/..., s3://..., https://...)",
        ),
        ("s3://B/x", True, "'s3://B/x': 'B' is not an S3 bucket name"),
        ("s3://bkt/d/", False, "'s3://bkt/d/': data is one object: s3://<bucket>/<key>"),
        ("s3://bkt/a/../b", False, "'s3://bkt/a/../b': the key may not contain '.' or '..' parts"),
        (
            "https://h.example/m",
            True,
            "'https://h.example/m': a model comes from hf:// or s3:// (an https:// source is one data file)",
        ),
        (
            "https://u:p@h.example/x.jsonl",
            False,
            "'https://u:p@h.example/x.jsonl': credentials may not be written into the URI (use a Secret)",
        ),
        (
            "https://h.example/x.jsonl?X-Amz-Signature=abc",
            False,
            "https://h.example/x.jsonl?...: a query string may carry a credential and is not accepted; use s3:// with a "
            "Secret for signed access",
        ),
    ],
)
def test_a_source_that_cannot_be_fetched_says_why(value: str, model: bool, message: str) -> None:
    with pytest.raises(SourceProblem) as info:
        parse_source(value, model=model)
    assert str(info.value) == message


def test_a_query_string_never_reaches_the_message() -> None:
    with pytest.raises(SourceProblem) as info:
        parse_source("https://h.example/x.jsonl?token=s3cr3t", model=False)
    assert "s3cr3t" not in str(info.value)


def test_absolute_paths_are_not_fetched() -> None:
    assert not is_remote("/models/tiny")
    assert is_remote("org/model") and is_remote("s3://b/k")


def test_each_source_lands_in_its_own_cache_directory() -> None:
    model = parse_source("hf://org/x@main", model=True)
    data = parse_source("s3://bkt/d/train.jsonl", model=False)
    assert model.cache_key == "org-x-main-d4cb57a5b7cf"
    assert model.local_path(CACHE) == "/checkpoints/.sft-sources/org-x-main-d4cb57a5b7cf/files"
    assert data.local_path(CACHE) == "/checkpoints/.sft-sources/bkt-d-train.jsonl-91d611cac7ba/files/train.jsonl"
    # Another revision is another directory: never mixed with the first one's files.
    assert parse_source("hf://org/x@v2", model=True).cache_key != model.cache_key


def test_export_uris() -> None:
    assert parse_export_uri("s3://bkt") == ("bkt", "")
    assert parse_export_uri("s3://bkt/runs/a/") == ("bkt", "runs/a")
    assert export_uri_of("s3://bkt/runs/a/", "hf_format/samples_64") == "s3://bkt/runs/a/hf_format/samples_64"
    assert export_uri_of("s3://bkt", "hf_format/last_epoch") == "s3://bkt/hf_format/last_epoch"
    with pytest.raises(SourceProblem):
        parse_export_uri("gs://bkt/x")


def spec(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "modelPath": "hf://org/x@main",
        "dataPath": "s3://bkt/d/train.jsonl",
        "numEpochs": 1,
        "effectiveBatchSize": 4,
        "learningRate": 1e-4,
        "maxSeqLen": 64,
        "checkpoints": {"existingClaim": "ckpt"},
    }
    body.update(overrides)
    return body


def test_remote_sources_become_local_paths_in_the_training_args_and_entries_in_the_config() -> None:
    parsed = parse_spec(spec(export={"uri": "s3://out/runs"}))
    args = parsed.training_args()
    assert args["model_path"] == "/checkpoints/.sft-sources/org-x-main-d4cb57a5b7cf/files"
    assert args["data_path"] == "/checkpoints/.sft-sources/bkt-d-train.jsonl-91d611cac7ba/files/train.jsonl"
    config = parsed.training_config("j", "ns")
    assert config[contract.CONFIG_KEY_SOURCES] == [
        {
            "field": "spec.modelPath",
            "uri": "hf://org/x@main",
            "cacheKey": "org-x-main-d4cb57a5b7cf",
            "localPath": "/checkpoints/.sft-sources/org-x-main-d4cb57a5b7cf/files",
        },
        {
            "field": "spec.dataPath",
            "uri": "s3://bkt/d/train.jsonl",
            "cacheKey": "bkt-d-train.jsonl-91d611cac7ba",
            "localPath": "/checkpoints/.sft-sources/bkt-d-train.jsonl-91d611cac7ba/files/train.jsonl",
        },
    ]
    assert config[contract.CONFIG_KEY_SOURCE_CACHE_ROOT] == "/checkpoints/.sft-sources"
    assert config[contract.CONFIG_KEY_EXPORT] == {"uri": "s3://out/runs", "fullStates": False, "restore": False}
    assert parsed.needs_transfer


def test_a_cache_claim_moves_the_cache() -> None:
    parsed = parse_spec(spec(remote={"cacheClaim": "hub-cache"}))
    assert parsed.training_args()["model_path"] == "/sft-source-cache/org-x-main-d4cb57a5b7cf/files"


def test_paths_in_the_pod_need_no_transfer() -> None:
    parsed = parse_spec(spec(modelPath="/models/tiny", dataPath="/data/train.jsonl"))
    assert not parsed.needs_transfer
    assert contract.CONFIG_KEY_SOURCES not in parsed.training_config("j", "ns")
    assert parsed.training_args()["model_path"] == "/models/tiny"


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        ({"modelPath": "s3://B/m"}, "spec.modelPath"),
        ({"dataPath": "hf://org/x"}, "spec.dataPath"),
        ({"dataPath": "train.jsonl"}, "spec.dataPath"),
        ({"export": {"uri": "gs://bkt/x"}}, "spec.export.uri"),
        ({"export": {"uri": "s3://bkt/x", "restore": True}}, "spec.export.restore"),
        ({"remote": {"huggingFace": {"tokenSecret": "Not_A_Name"}}}, "spec.remote.huggingFace.tokenSecret"),
        ({"remote": {"s3": {"endpoint": "ftp://x"}}}, "spec.remote.s3.endpoint"),
    ],
)
def test_bad_sources_and_targets_are_refused_naming_the_field(overrides: dict[str, Any], path: str) -> None:
    with pytest.raises(InvalidSpecError) as info:
        parse_spec(spec(**overrides))
    assert [p for p, _ in info.value.problems] == [path]


def test_the_transfer_report_is_bounded() -> None:
    state = TransferState.model_validate(
        {
            "downloads": [
                {
                    "field": "spec.modelPath",
                    "source": "hf://o/x",
                    "state": "Downloading",
                    "bytesDone": 5,
                    "bytesTotal": 10,
                }
            ]
        }
    )
    assert state.downloads[0].bytes_done == 5
    with pytest.raises(ValueError):
        TransferState.model_validate({"downloads": [{"field": "f", "source": "s", "state": "Done", "bytesDone": -1}]})
