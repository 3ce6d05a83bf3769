"""The transfer sidecar's export and restore against moto's S3 server (request log)."""

from __future__ import annotations

import io
import json
import os
import pickle
import time
import zipfile
from pathlib import Path

import pytest
from transfer_helpers import Sidecar, write_config

from devtools.object_store import ObjectStore
from sft_core import checkpoints, sources

OLD = time.time() - 3600


@pytest.fixture(scope="module")
def s3():
    with ObjectStore() as store:
        store.client().make_bucket("exports")
        yield store


def _old(path: Path) -> None:
    for item in [path, *path.rglob("*")]:
        os.utime(item, (OLD, OLD))


def _hf(root: Path, name: str, *, weights: bool = True, old: bool = True) -> Path:
    path = root / checkpoints.HF_FORMAT_DIR / name
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "llama"}')
    (path / "tokenizer.json").write_bytes(os.urandom(3000))
    if weights:
        (path / "model.safetensors").write_bytes(os.urandom(200_000))
    if old:
        _old(path)
    return path


def _full_state(root: Path, name: str, *, complete: bool = True, mid_epoch: bool = False) -> Path:
    path = root / checkpoints.FULL_STATE_DIR / name
    path.mkdir(parents=True)
    (path / "pytorch_model.bin").write_bytes(os.urandom(100_000))
    (path / "optimizer.bin").write_bytes(os.urandom(50_000))
    if complete:
        meta = {"current_epoch": int(name.split("_")[1]), "samples_seen": 48}
        if mid_epoch:
            meta["global_step"] = 5
        with zipfile.ZipFile(path / checkpoints.TRAINING_METADATA_FILE, "w") as archive:
            archive.writestr("training_metadata/data.pkl", pickle.dumps(meta))
    _old(path)
    return path


def _objects(store: ObjectStore, prefix: str) -> dict[str, int]:
    return {o.object_name: o.size for o in store.client().list_objects("exports", prefix=prefix, recursive=True)}


def _wait_exports(sidecar: Sidecar, want: set[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = sidecar.state()
        if {e["checkpoint"] for e in state.get("exports", [])} >= want:
            return state
        assert sidecar.proc.poll() is None, sidecar.output()[-3000:]
        time.sleep(0.1)
    raise AssertionError(f"exports {sidecar.state()}; {sidecar.output()[-3000:]}")


def test_export_complete_checkpoints_only_marker_last_restart_safe(tmp_path, s3):
    ckpt = tmp_path / "ckpt"
    _hf(ckpt, "samples_8")
    _hf(ckpt, "samples_16", weights=False)  # incomplete: no weights
    _hf(ckpt, "samples_24", old=False)  # weights being written right now
    _full_state(ckpt, "epoch_1")
    _full_state(ckpt, "epoch_2", complete=False)  # no training_metadata.json yet
    config = write_config(tmp_path, [], export={"uri": "s3://exports/run1", "fullStates": True})
    s3.clear_log()
    sidecar = Sidecar(tmp_path, config, s3.env())
    try:
        state = _wait_exports(sidecar, {"hf_format/samples_8", "full_state/epoch_1"})
        time.sleep(1.0)
        assert sidecar.terminate() == 0
    finally:
        sidecar.close()
    assert {(e["checkpoint"], e["uri"]) for e in state["exports"]} == {
        ("hf_format/samples_8", "s3://exports/run1/hf_format/samples_8"),
        ("full_state/epoch_1", "s3://exports/run1/full_state/epoch_1"),
    }
    marker = sources.EXPORT_COMPLETE_OBJECT
    assert _objects(s3, "run1/") == {
        "run1/hf_format/samples_8/config.json": 23,
        "run1/hf_format/samples_8/tokenizer.json": 3000,
        "run1/hf_format/samples_8/model.safetensors": 200_000,
        f"run1/hf_format/samples_8/{marker}": _objects(s3, f"run1/hf_format/samples_8/{marker}")[
            f"run1/hf_format/samples_8/{marker}"
        ],
        "run1/full_state/epoch_1/pytorch_model.bin": 100_000,
        "run1/full_state/epoch_1/optimizer.bin": 50_000,
        f"run1/full_state/epoch_1/{checkpoints.TRAINING_METADATA_FILE}": (
            ckpt / "full_state/epoch_1" / checkpoints.TRAINING_METADATA_FILE
        )
        .stat()
        .st_size,
        f"run1/full_state/epoch_1/{marker}": _objects(s3, f"run1/full_state/epoch_1/{marker}")[
            f"run1/full_state/epoch_1/{marker}"
        ],
    }
    for ckpt_name in ("hf_format/samples_8", "full_state/epoch_1"):
        puts = [
            r["path"]
            for r in s3.requests
            if r["method"] == "PUT" and r["path"].startswith(f"/exports/run1/{ckpt_name}/")
        ]
        assert puts[-1] == f"/exports/run1/{ckpt_name}/{marker}" and len(puts) == len(set(puts))
    response = s3.client().get_object("exports", "run1/hf_format/samples_8/model.safetensors")
    assert response.read() == (ckpt / "hf_format/samples_8/model.safetensors").read_bytes()
    response.close(), response.release_conn()

    # Restarted: nothing uploaded again, with the report or without it (the remote marker says so).
    for lose_report in (False, True):
        if lose_report:
            (ckpt / sources.TRANSFER_STATE_FILE).unlink()
        s3.clear_log()
        sidecar = Sidecar(tmp_path, config, s3.env())
        try:
            state = _wait_exports(sidecar, {"hf_format/samples_8", "full_state/epoch_1"})
            time.sleep(1.0)
            assert sidecar.terminate() == 0
        finally:
            sidecar.close()
        assert [r for r in s3.requests if r["method"] in ("PUT", "POST")] == []

    # The checkpoint being written is exported once it is quiet; the incomplete ones never.
    _old(ckpt / "hf_format/samples_24")
    s3.clear_log()
    sidecar = Sidecar(tmp_path, config, s3.env())
    try:
        _wait_exports(sidecar, {"hf_format/samples_24"})
        assert sidecar.terminate() == 0
    finally:
        sidecar.close()
    assert not _objects(s3, "run1/hf_format/samples_16/") and not _objects(s3, "run1/full_state/epoch_2/")


def test_an_upload_cut_before_its_marker_resumes_and_another_runs_files_are_replaced(tmp_path, s3):
    ckpt = tmp_path / "ckpt"
    hf = _hf(ckpt, "samples_8")
    # Another run exported a checkpoint of the same name and sizes into this prefix.
    other = os.urandom(200_000)
    s3.client().put_object("exports", "run2/hf_format/samples_8/model.safetensors", io.BytesIO(other), len(other))
    config = write_config(tmp_path, [], export={"uri": "s3://exports/run2"})

    def export_once() -> list[str]:
        s3.clear_log()
        sidecar = Sidecar(tmp_path, config, s3.env())
        try:
            _wait_exports(sidecar, {"hf_format/samples_8"})
            assert sidecar.terminate() == 0
        finally:
            sidecar.close()
        return sorted(r["path"].rsplit("/", 1)[-1] for r in s3.requests if r["method"] == "PUT")

    marker = sources.EXPORT_COMPLETE_OBJECT
    assert export_once() == sorted([marker, "config.json", "model.safetensors", "tokenizer.json"])
    response = s3.client().get_object("exports", "run2/hf_format/samples_8/model.safetensors")
    assert response.read() == (hf / "model.safetensors").read_bytes()
    response.close(), response.release_conn()
    # Cut after the files, before the marker: only the marker is uploaded again.
    s3.client().remove_object("exports", f"run2/hf_format/samples_8/{marker}")
    (ckpt / sources.TRANSFER_STATE_FILE).unlink()
    assert export_once() == [marker]


def test_export_failure_is_retried_and_visible(tmp_path, s3):
    ckpt = tmp_path / "ckpt"
    _hf(ckpt, "samples_8")
    sidecar = Sidecar(tmp_path, write_config(tmp_path, [], export={"uri": "s3://no-such-export-bucket/run"}), s3.env())
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sidecar.state().get("exportAttempts", 0) < 2:
            time.sleep(0.1)
        state = sidecar.state()
        assert sidecar.terminate() == 0
    finally:
        sidecar.close()
    host = s3.url.split("//", 1)[1]
    assert state["exportAttempts"] >= 2 and state["exports"] == []
    assert state["exportError"] == (
        f"spec.export.uri (s3://no-such-export-bucket/run): 404 NoSuchBucket: bucket "
        f"no-such-export-bucket does not exist at {host}"
    )


def test_restore_the_newest_complete_exported_full_state(tmp_path, s3):
    client = s3.client()
    remote = {"epoch_1": b"one" * 1000, "epoch_2": b"two" * 1000, "epoch_3": b"three" * 1000}
    for name, payload in remote.items():
        base = f"run3/full_state/{name}"
        client.put_object("exports", f"{base}/pytorch_model.bin", io.BytesIO(payload), len(payload))
        if name != "epoch_3":  # epoch_3's upload was cut short: no marker
            marker = json.dumps(
                {"checkpoint": f"full_state/{name}", "files": [{"path": "pytorch_model.bin", "size": len(payload)}]}
            ).encode()
            client.put_object("exports", f"{base}/{sources.EXPORT_COMPLETE_OBJECT}", io.BytesIO(marker), len(marker))
    config = write_config(tmp_path, [], export={"uri": "s3://exports/run3", "restore": True})
    sidecar = Sidecar(tmp_path, config, s3.env())
    try:
        state = sidecar.wait_done(60)
        assert sidecar.terminate() == 0
    finally:
        sidecar.close()
    ckpt = tmp_path / "ckpt"
    assert state["downloads"] == [
        {
            "field": "spec.export.uri",
            "source": "s3://exports/run3",
            "state": "Done",
            "bytesDone": 0,
            "revision": "full_state/epoch_2",
            "cached": False,
        }
    ]
    assert (ckpt / "full_state/epoch_2/pytorch_model.bin").read_bytes() == remote["epoch_2"]
    assert not (ckpt / "full_state/epoch_1").exists() and not (ckpt / "full_state/epoch_3").exists()
    assert json.loads((ckpt / sources.RESTORE_DONE_FILE).read_text())["restored"] == "full_state/epoch_2"

    # Nothing to restore into a directory that has its own state, nor from an empty target.
    other = tmp_path / "other"
    _full_state(other / "ckpt", "epoch_1")
    sidecar = Sidecar(other, write_config(other, [], export={"uri": "s3://exports/empty", "restore": True}), s3.env())
    try:
        sidecar.wait_done(60)
        assert sidecar.terminate() == 0
    finally:
        sidecar.close()
    assert json.loads((other / "ckpt" / sources.RESTORE_DONE_FILE).read_text())["restored"] is None
