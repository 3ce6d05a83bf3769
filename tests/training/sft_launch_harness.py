"""Run sft-trainer launchers as separate processes with exactly the env a StatefulSet pod gets."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sft_core import contract

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(
    path: Path,
    *,
    model_dir: Path,
    data_path: Path,
    ckpt_dir: Path,
    num_epochs: int,
    retention: int | None = None,
    extra_args: dict | None = None,
    extra_top: dict | None = None,
) -> Path:
    config = {
        contract.CONFIG_KEY_JOB_NAME: "job",
        contract.CONFIG_KEY_NAMESPACE: "tests",
        contract.CONFIG_KEY_NUM_EPOCHS: num_epochs,
        contract.CONFIG_KEY_RETENTION: retention,
        contract.CONFIG_KEY_TRAINING_ARGS: {
            "model_path": str(model_dir),
            "data_path": str(data_path),
            "ckpt_output_dir": str(ckpt_dir),
            "data_output_dir": str(ckpt_dir / "data"),
            "num_epochs": num_epochs,
            "max_seq_len": 512,
            "max_batch_len": 2048,
            "effective_batch_size": 4,
            "learning_rate": 1e-3,
            "data_process_num_cpu_procs": 1,
            "fsdp_options": {"sharding_strategy": "FULL_SHARD"},
            **(extra_args or {}),
        },
        **(extra_top or {}),
    }
    path.write_text(json.dumps(config))
    return path


def pod_env(*, config: Path, node_rank: int, nnodes: int, port: int, rdzv_id: str, home: Path) -> dict[str, str]:
    """The StatefulSet's env (contract names) plus offline/quiet settings for the test box."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PET_", "SFT_"))}
    env.update(
        {
            contract.ENV_NNODES: str(nnodes),
            contract.ENV_NPROC_PER_NODE: "1",
            contract.ENV_MASTER_ADDR: "127.0.0.1",
            contract.ENV_MASTER_PORT: str(port),
            contract.ENV_RDZV_ENDPOINT: f"127.0.0.1:{port}",
            contract.ENV_RDZV_ID: rdzv_id,
            contract.ENV_POD_NAME: f"job-{node_rank}",
            contract.ENV_CONFIG_PATH: str(config),
            contract.ENV_DEVICE: "cpu",
            # the pod's terminationMessagePath (/dev/termination-log in a real pod)
            contract.ENV_TERMINATION_LOG: str(home / f"termination-log-{node_rank}"),
            "HF_HOME": str(home / "hf"),
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    return env


@dataclass
class Launcher:
    name: str
    process: subprocess.Popen
    log_path: Path
    _log_handle: object = field(repr=False)
    message_path: Path | None = None

    def termination_message(self) -> str:
        """What the kubelet would put in terminated.message (the file, not the log tail)."""
        if self.message_path is None or not self.message_path.exists():
            return ""
        return self.message_path.read_text()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, chars: int = 4000) -> str:
        return f"--- {self.name} log tail ---\n{self.log()[-chars:]}"

    def wait_for_log(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited {self.process.returncode} before logging {text!r}\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not log {text!r} in {timeout}s\n{self.tail()}")
            time.sleep(0.2)

    def terminate(self) -> None:
        # Like the kubelet: SIGTERM to the launcher (PID 1) only, not its process group.
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after {timeout}s\n{self.tail()}") from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self._log_handle.close()


def start_launcher(name: str, env: dict[str, str], log_dir: Path) -> Launcher:
    log_path = log_dir / f"{name}.log"
    handle = open(log_path, "ab")
    process = subprocess.Popen(
        [str(VENV_BIN / "sft-trainer")], env=env, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    message_path = env.get(contract.ENV_TERMINATION_LOG)
    if message_path:
        Path(message_path).write_text("")  # a new container starts with an empty file
    return Launcher(
        name=name,
        process=process,
        log_path=log_path,
        _log_handle=handle,
        message_path=Path(message_path) if message_path else None,
    )


def tree_digest(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under root with its mtime_ns and content hash: proves nothing was touched."""
    digest = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest[str(path.relative_to(root))] = (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return digest
