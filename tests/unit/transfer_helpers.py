"""Running the transfer sidecar (``python -m sft_trainer.transfer``) as the pod would, for tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sft_core import contract, sources

ROOT = Path(__file__).resolve().parents[2]
PYTHONPATH = os.pathsep.join(str(ROOT / p) for p in ("", "operator", "trainer-image"))


def source_entry(field: str, uri: str, cache_root: Path) -> dict:
    source = sources.parse_source(uri, model=field == "spec.modelPath")
    return {
        "field": field,
        "uri": source.uri,
        "cacheKey": source.cache_key,
        "localPath": source.local_path(str(cache_root)),
    }


def write_config(tmp: Path, entries: list[tuple[str, str]], *, export: dict | None = None) -> Path:
    ckpt = tmp / "ckpt"
    cache = tmp / "cache"
    ckpt.mkdir(parents=True, exist_ok=True)
    config = {
        contract.CONFIG_KEY_TRAINING_ARGS: {"ckpt_output_dir": str(ckpt), "model_path": "/m", "data_path": "/d"},
        contract.CONFIG_KEY_SOURCES: [source_entry(f, u, cache) for f, u in entries],
        contract.CONFIG_KEY_SOURCE_CACHE_ROOT: str(cache),
    }
    if export is not None:
        config[contract.CONFIG_KEY_EXPORT] = export
    path = tmp / "training.json"
    path.write_text(json.dumps(config))
    return path


class Sidecar:
    def __init__(self, tmp: Path, config: Path, env: dict[str, str], pod: str = "job-0"):
        self.tmp = tmp
        self.termination_log = tmp / f"termination-{time.monotonic_ns()}.log"
        self.stderr_path = tmp / f"sidecar-{time.monotonic_ns()}.err"
        full_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AWS_", "HF_")) and k not in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")
        }
        full_env.update(
            {
                "PYTHONPATH": PYTHONPATH,
                contract.ENV_POD_NAME: pod,
                contract.ENV_CONFIG_PATH: str(config),
                contract.ENV_TERMINATION_LOG: str(self.termination_log),
                "HOME": str(tmp / "home"),
            }
        )
        full_env.update(env)
        self.started_ns = time.time_ns()
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sft_trainer.transfer"], env=full_env, stdout=self._stderr, stderr=subprocess.STDOUT
        )

    def state(self) -> dict:
        path = self.tmp / "ckpt" / sources.TRANSFER_STATE_FILE
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def wait_done(self, timeout: float = 60) -> dict:
        """Until every download is Done (the sidecar then idles or exports)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state()
            downloads = state.get("downloads") or []
            if downloads and all(d["state"] == "Done" for d in downloads) and self._written_since_start():
                return state
            if self.proc.poll() is not None:
                raise AssertionError(f"sidecar exited {self.proc.returncode}: {self.output()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"not done in {timeout}s: {self.state()} {self.output()[-3000:]}")

    def _written_since_start(self) -> bool:
        """An earlier run's report in the same directory does not count."""
        try:
            return (self.tmp / "ckpt" / sources.TRANSFER_STATE_FILE).stat().st_mtime_ns >= self.started_ns
        except OSError:
            return False

    def wait_exit(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"sidecar still running after {timeout}s: {self.output()[-3000:]}")

    def terminate(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def output(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def message(self) -> str:
        return self.termination_log.read_text().strip() if self.termination_log.exists() else ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        self._stderr.close()
