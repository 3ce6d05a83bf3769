"""The launcher's wait for the transfer sidecar (every rank, before anything else)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sft_core import contract, sources
from sft_trainer import transfer_wait
from sft_trainer.errors import PeerUnavailable

URI = "hf://org/x@main"


def _setup(tmp_path: Path, *, restore: bool = False) -> dict:
    key = sources.parse_source(URI, model=True).cache_key
    raw = {
        contract.CONFIG_KEY_TRAINING_ARGS: {"ckpt_output_dir": str(tmp_path / "ckpt")},
        contract.CONFIG_KEY_SOURCES: [
            {
                "field": "spec.modelPath",
                "uri": URI,
                "cacheKey": key,
                "localPath": str(tmp_path / "cache" / key / "files"),
            }
        ],
        contract.CONFIG_KEY_SOURCE_CACHE_ROOT: str(tmp_path / "cache"),
    }
    if restore:
        raw[contract.CONFIG_KEY_EXPORT] = {"uri": "s3://bucket/run", "restore": True}
    return raw


def _state(tmp_path: Path, state: str, updated: str, error: str | None = None) -> None:
    path = tmp_path / "ckpt" / sources.TRANSFER_STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    download = {"field": "spec.modelPath", "source": URI, "state": state}
    if error:
        download["error"] = error
    path.write_text(json.dumps({"downloads": [download], "updatedAt": updated}))


def _complete(tmp_path: Path, uri: str = URI) -> None:
    key = sources.parse_source(URI, model=True).cache_key
    path = tmp_path / "cache" / key / sources.SOURCE_MANIFEST_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"uri": uri, "revision": "a" * 40, "files": [], "completedAt": "2026-01-01T00:00:00Z"}))


class FakeTime:
    def __init__(self, on_sleep=None):
        self.now = 0.0
        self.on_sleep = on_sleep

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        if self.on_sleep:
            self.on_sleep(self.now)


def test_no_sources_no_wait(tmp_path):
    transfer_wait.wait_for_transfers(
        {contract.CONFIG_KEY_TRAINING_ARGS: {"ckpt_output_dir": "/x"}}, sleep=lambda s: pytest.fail("waited")
    )


def test_ready_when_complete_and_reported_done(tmp_path):
    _complete(tmp_path)
    _state(tmp_path, "Done", "t1")
    transfer_wait.wait_for_transfers(_setup(tmp_path), sleep=lambda s: pytest.fail("waited"))


def test_an_earlier_complete_copy_waits_for_this_run(tmp_path):
    _complete(tmp_path)
    _state(tmp_path, "Pending", "t0")  # the sidecar checks whether main moved

    def progress(now: float) -> None:
        if now >= 5:
            _state(tmp_path, "Done", "t5")

    fake = FakeTime(progress)
    transfer_wait.wait_for_transfers(_setup(tmp_path), clock=fake.clock, sleep=fake.sleep)
    assert fake.now == 5


def test_heartbeat_keeps_a_long_download_waiting(tmp_path):
    def progress(now: float) -> None:
        _state(tmp_path, "Downloading", f"t{now}")  # a new updatedAt every poll
        if now >= 2000:
            _complete(tmp_path)
            _state(tmp_path, "Done", "done")

    fake = FakeTime(progress)
    transfer_wait.wait_for_transfers(_setup(tmp_path), stall_timeout=600, clock=fake.clock, sleep=fake.sleep)
    assert fake.now == 2000


def test_no_report_for_the_stall_timeout_is_exit_4(tmp_path):
    _state(tmp_path, "Downloading", "frozen")
    fake = FakeTime()
    with pytest.raises(PeerUnavailable) as raised:
        transfer_wait.wait_for_transfers(_setup(tmp_path), stall_timeout=30, clock=fake.clock, sleep=fake.sleep)
    assert raised.value.exit_code == contract.EXIT_PEER_UNAVAILABLE
    assert raised.value.message == (
        f"{URI}: the transfer sidecar (container transfer of pod 0) has not reported for 30s; no complete "
        f"download under {tmp_path / 'cache'} (sft-operator/TRANSFERS.json under {tmp_path / 'ckpt'})"
    )


def test_a_failed_source_is_exit_2_with_its_line(tmp_path):
    line = "spec.modelPath (hf://org/x@main): 401 Unauthorized: the token in Secret hf-token cannot read org/x"
    _state(tmp_path, "Failed", "t", error=line)
    with pytest.raises(transfer_wait.SourceFailed) as raised:
        transfer_wait.wait_for_transfers(_setup(tmp_path), sleep=lambda s: None)
    assert (raised.value.exit_code, raised.value.message) == (contract.EXIT_BAD_CONFIG, line)


def test_restore_waits_for_its_marker(tmp_path):
    _complete(tmp_path)
    _state(tmp_path, "Done", "t")
    marker = tmp_path / "ckpt" / sources.RESTORE_DONE_FILE

    def restore(now: float) -> None:
        if now >= 3:
            marker.write_text("{}")

    fake = FakeTime(restore)
    transfer_wait.wait_for_transfers(_setup(tmp_path, restore=True), clock=fake.clock, sleep=fake.sleep)
    assert fake.now == 3


def test_a_bad_sources_entry_is_a_config_error(tmp_path):
    raw = _setup(tmp_path)
    raw[contract.CONFIG_KEY_SOURCES][0]["cacheKey"] = "x"
    with pytest.raises(transfer_wait.ConfigError) as raised:
        transfer_wait.wait_for_transfers(raw)
    assert raised.value.message.startswith("sources[0].cacheKey: 'x' is not hf://org/x@main's")


def test_the_launcher_exits_2_with_the_sidecars_line_before_touching_anything(tmp_path, monkeypatch):
    from sft_trainer import launcher

    line = "spec.modelPath (hf://org/x@main): 404 Not Found: no model repo org/x, or the token in Secret hf-token cannot read it"
    raw = _setup(tmp_path)
    raw[contract.CONFIG_KEY_TRAINING_ARGS].update(
        {
            "model_path": raw[contract.CONFIG_KEY_SOURCES][0]["localPath"],
            "data_path": str(tmp_path / "d.jsonl"),
            "num_epochs": 1,
            "max_seq_len": 64,
            "max_batch_len": 64,
            "effective_batch_size": 1,
            "learning_rate": 1e-5,
        }
    )
    config = tmp_path / "training.json"
    config.write_text(json.dumps(raw))
    _state(tmp_path, "Failed", "t", error=line)
    for key, value in {
        "PET_NNODES": "2",
        "PET_NPROC_PER_NODE": "1",
        "PET_RDZV_ENDPOINT": "127.0.0.1:29500",
        "PET_RDZV_ID": "uid",
        "SFT_POD_NAME": "job-1",
        "SFT_CONFIG": str(config),
        "SFT_DEVICE": "cpu",
        "SFT_TERMINATION_LOG": str(tmp_path / "termination-log"),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SFT_POD_STATE_DIR", raising=False)
    assert launcher.main() == contract.EXIT_BAD_CONFIG
    assert (tmp_path / "termination-log").read_text() == line + "\n"
    assert sorted(p.name for p in (tmp_path / "ckpt").rglob("*")) == ["TRANSFERS.json", "sft-operator"]
