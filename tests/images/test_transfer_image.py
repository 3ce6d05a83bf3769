"""The transfer sidecar in the trainer image, as the pod runs it (numeric non-root user, read-only
root with a /tmp emptyDir, `python -m sft_trainer.transfer`): it fetches from this machine's
local Hugging Face endpoint and S3 server, exports a checkpoint, and stops on SIGTERM with 0."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from images_harness import ROOT, docker

sys.path.insert(0, str(ROOT / "tests" / "unit"))
from transfer_helpers import source_entry  # noqa: E402

from devtools.hf_endpoint import HfEndpoint, publish  # noqa: E402
from devtools.object_store import ObjectStore  # noqa: E402

pytestmark = [pytest.mark.images, pytest.mark.timeout(900)]

TOKEN = "hf_image_test_token_5e4d3c"


def test_the_sidecar_fetches_and_exports_in_the_trainer_image(
    trainer_image: str, tmp_path: Path, container_names: list[str]
) -> None:
    hub_root = tmp_path / "hub"
    weights = os.urandom(3_000_000)
    publish(hub_root, "model", "org/tiny", {"config.json": b"{}", "model.safetensors": weights})
    work = tmp_path / "work"
    hf_dir = work / "ckpt" / "hf_format" / "samples_8"
    hf_dir.mkdir(parents=True)
    (hf_dir / "config.json").write_text("{}")
    (hf_dir / "model.safetensors").write_bytes(b"w" * 1000)
    for path in [hf_dir, *hf_dir.iterdir()]:
        os.utime(path, (time.time() - 3600,) * 2)  # written long ago: quiet, exportable
    subprocess.run(["chmod", "-R", "a+rwX", str(work)], check=True)
    data = b'{"messages": [{"role": "user", "content": "hi"}]}\n' * 50
    with (
        HfEndpoint(hub_root, host="127.0.0.1", tokens={TOKEN: None}, private={"org/tiny"}) as hub,
        ObjectStore(host="127.0.0.1") as store,
    ):
        client = store.client()
        client.make_bucket("data")
        client.make_bucket("exports")
        client.put_object("data", "train.jsonl", io.BytesIO(data), len(data))
        cache = Path("/work/cache")
        config = {
            "trainingArgs": {"ckpt_output_dir": "/work/ckpt"},
            "sourceCacheRoot": str(cache),
            "sources": [
                source_entry("spec.modelPath", "hf://org/tiny", cache),
                source_entry("spec.dataPath", "s3://data/train.jsonl", cache),
            ],
            "export": {"uri": "s3://exports/run"},
        }
        (work / "training.json").write_text(json.dumps(config))
        env = {
            "SFT_POD_NAME": "job-0",
            "SFT_CONFIG": "/work/training.json",
            "SFT_TERMINATION_LOG": "/work/term.log",
            "HOME": "/tmp",
            "HF_ENDPOINT": hub.url,
            "HF_TOKEN": TOKEN,
            "SFT_HF_TOKEN_SECRET": "hf-token",
            **store.env(),
        }
        name = f"sft-transfer-test-{os.getpid()}"
        container_names.append(name)
        docker(
            "run",
            "--detach",
            "--name",
            name,
            "--network",
            "host",
            "--user",
            "65532:65532",
            "--read-only",
            "--tmpfs",
            "/tmp:rw,mode=1777",
            "-v",
            f"{work}:/work",
            *[a for k, v in env.items() for a in ("-e", f"{k}={v}")],
            "--entrypoint",
            "python",
            trainer_image,
            "-m",
            "sft_trainer.transfer",
        )
        report = work / "ckpt" / "sft-operator" / "TRANSFERS.json"
        deadline = time.monotonic() + 120
        state: dict = {}
        while time.monotonic() < deadline:
            try:
                state = json.loads(report.read_text())
            except (OSError, ValueError):
                state = {}
            if state.get("exports") and all(d["state"] == "Done" for d in state.get("downloads", [])):
                break
            time.sleep(0.5)
        docker("stop", "--time", "20", name, timeout=60)
        code = docker("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        logs = docker("logs", name).stdout + docker("logs", name).stderr
        assert code == "0", logs[-3000:]
        assert [(d["source"], d["state"]) for d in state["downloads"]] == [
            ("hf://org/tiny", "Done"),
            ("s3://data/train.jsonl", "Done"),
        ], (state, logs[-3000:])
        assert [e["uri"] for e in state["exports"]] == ["s3://exports/run/hf_format/samples_8"]
        model = work / "cache" / source_entry("spec.modelPath", "hf://org/tiny", cache)["cacheKey"] / "files"
        assert (model / "model.safetensors").read_bytes() == weights
        assert (
            Path(
                str(work) + source_entry("spec.dataPath", "s3://data/train.jsonl", cache)["localPath"][len("/work") :]
            ).read_bytes()
            == data
        )
        assert sorted(o.object_name for o in client.list_objects("exports", prefix="run/", recursive=True)) == [
            "run/hf_format/samples_8/.sft-export-complete.json",
            "run/hf_format/samples_8/config.json",
            "run/hf_format/samples_8/model.safetensors",
        ]
        assert len(hub.file_downloads("model.safetensors")) == 1
        assert TOKEN not in logs and store.env()["AWS_SECRET_ACCESS_KEY"] not in logs
