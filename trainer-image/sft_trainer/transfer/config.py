"""The part of the training config (contract.py) the transfer sidecar and the launcher's wait use.

Pure: a dict in, a TransferConfig or a ConfigProblem naming the config key out. The operator
renders these keys; a sidecar reading a config it cannot use exits 2 with that key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sft_core import contract, sources
from sft_core.sources import Source, SourceProblem


class ConfigProblem(ValueError):
    """A config key the sidecar cannot use; the message starts with the key."""


@dataclass(frozen=True)
class SourceEntry:
    field: str  # "spec.modelPath"
    source: Source
    cache_key: str
    local_path: str

    @property
    def uri(self) -> str:
        return self.source.uri


@dataclass(frozen=True)
class ExportConfig:
    uri: str
    bucket: str
    prefix: str
    full_states: bool = False
    restore: bool = False


@dataclass(frozen=True)
class TransferConfig:
    ckpt_dir: Path
    cache_root: Path | None
    sources: tuple[SourceEntry, ...]
    export: ExportConfig | None

    @property
    def source_cache_root(self) -> Path:
        """cache_root, which parse requires whenever there are sources."""
        if self.cache_root is None:
            raise ConfigProblem(f"{contract.CONFIG_KEY_SOURCE_CACHE_ROOT}: not set")
        return self.cache_root


def parse(raw: object) -> TransferConfig:
    if not isinstance(raw, dict):
        raise ConfigProblem(f"{contract.ENV_CONFIG_PATH}: the config must be a JSON object")
    args = raw.get(contract.CONFIG_KEY_TRAINING_ARGS)
    ckpt = args.get("ckpt_output_dir") if isinstance(args, dict) else None
    if not isinstance(ckpt, str) or not ckpt.startswith("/"):
        raise ConfigProblem(f"{contract.CONFIG_KEY_TRAINING_ARGS}.ckpt_output_dir: an absolute path is required")
    entries = raw.get(contract.CONFIG_KEY_SOURCES) or []
    root = raw.get(contract.CONFIG_KEY_SOURCE_CACHE_ROOT)
    if not isinstance(entries, list):
        raise ConfigProblem(f"{contract.CONFIG_KEY_SOURCES}: must be a list")
    if entries and (not isinstance(root, str) or not root.startswith("/")):
        raise ConfigProblem(f"{contract.CONFIG_KEY_SOURCE_CACHE_ROOT}: an absolute path is required with sources")
    parsed = tuple(_source_entry(i, e) for i, e in enumerate(entries))
    return TransferConfig(
        Path(ckpt), Path(root) if isinstance(root, str) else None, parsed, _export(raw.get(contract.CONFIG_KEY_EXPORT))
    )


def _source_entry(index: int, entry: object) -> SourceEntry:
    key = f"{contract.CONFIG_KEY_SOURCES}[{index}]"
    if not isinstance(entry, dict):
        raise ConfigProblem(f"{key}: must be an object")
    for name in ("field", "uri", "cacheKey", "localPath"):
        if not isinstance(entry.get(name), str) or not entry[name]:
            raise ConfigProblem(f"{key}.{name}: a non-empty string is required")
    field = entry["field"]
    try:
        source = sources.parse_source(entry["uri"], model=field == "spec.modelPath")
    except SourceProblem as problem:
        raise ConfigProblem(f"{field}: {problem}") from None
    if source.cache_key != entry["cacheKey"]:
        raise ConfigProblem(f"{key}.cacheKey: {entry['cacheKey']!r} is not {source.uri}'s ({source.cache_key})")
    return SourceEntry(field, source, entry["cacheKey"], entry["localPath"])


def _export(value: object) -> ExportConfig | None:
    if value is None:
        return None
    key = contract.CONFIG_KEY_EXPORT
    if not isinstance(value, dict) or not isinstance(value.get("uri"), str):
        raise ConfigProblem(f"{key}.uri: an s3://bucket/prefix is required")
    try:
        bucket, prefix = sources.parse_export_uri(value["uri"])
    except SourceProblem as problem:
        raise ConfigProblem(f"{key}.uri: {problem}") from None
    return ExportConfig(
        value["uri"], bucket, prefix, bool(value.get("fullStates", False)), bool(value.get("restore", False))
    )


def load(path: Path) -> TransferConfig:
    try:
        raw = json.loads(Path(path).read_text())
    except OSError as error:
        raise ConfigProblem(f"{contract.ENV_CONFIG_PATH}: cannot read {path}: {error.strerror}") from None
    except ValueError as error:
        raise ConfigProblem(f"{contract.ENV_CONFIG_PATH}: {path} is not JSON: {error}") from None
    return parse(raw)
