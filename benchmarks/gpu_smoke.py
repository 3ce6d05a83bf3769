"""GPU smoke run: the launcher from source on one GPU, without the image.

    PYTHONPATH=.:operator:trainer-image python benchmarks/gpu_smoke.py [--json OUT] [--work DIR]
    PYTHONPATH=.:operator:trainer-image python benchmarks/gpu_smoke.py --dry-run   # the same steps on CPU

In a Python environment with PyPI's CUDA torch and instructlab-training 0.16.2 (no image, no
cluster), on 1 node x 1 GPU:

1. logs the driver (nvidia-smi and the driver API's CUDA version), torch's CUDA and NCCL
   versions, and the timeout a process group gets the way instructlab-training creates it
   (``init_process_group()`` with no backend: the NCCL timeout jobs run with);
2. builds a small Llama offline (devtools/tiny_model.py's builder, ~100 M parameters on a GPU)
   and chat data;
3. trains it through the launcher (``python -m sft_trainer.launcher`` with the pod's env
   contract) to completion: checks the completion marker, the final hf checkpoint and the
   metrics log (every step of every epoch);
4. starts a second run, SIGTERMs the launcher in the middle of the second epoch (as the kubelet
   does), times the on-demand save (signal to exit 3, full state size and write rate), restarts
   it and checks that the resumed run logs exactly the uninterrupted run's (epoch, samples_seen)
   sequence from the step after the save, with the same losses;
5. trains the same TrainingArgs on the same processed data with instructlab-training's own
   ``run_training`` (torchrun + main_ds, no launcher): the launcher's overhead in samples/s and in
   time to the first step.

Prints a figures table, writes JSON (--json), exits 1 if a check failed. ``--dry-run`` runs
every step on CPU (SFT_DEVICE=cpu, the 2-layer tiny model, a few steps): what the training tier
tests (tests/training/test_gpu_smoke_dry_run.py). On one H100 the GPU run is sized to take well
under 8 minutes (docs/trainer.md, "GPU smoke run").
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "operator", ROOT / "trainer-image"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from devtools.tiny_model import make_messages, write_messages_jsonl, write_tiny_model  # noqa: E402
from sft_core import checkpoints as ck  # noqa: E402
from sft_core import contract  # noqa: E402


@dataclass(frozen=True)
class Plan:
    """What one smoke run trains."""

    device: str  # "cuda" or "cpu"
    nproc: int
    sizes: dict[str, int]
    num_samples: int
    words_per_turn: int
    num_epochs: int
    effective_batch_size: int
    max_seq_len: int
    max_batch_len: int
    learning_rate: float
    run_timeout_s: float
    loss_rel_tolerance: float

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.num_samples // self.effective_batch_size)


GPU_PLAN = Plan(
    device="cuda",
    nproc=1,
    # ~100 M parameters (vocab 256): big enough that a step and a save are GPU work, small
    # enough for the whole smoke run to stay in minutes.
    sizes={
        "hidden_size": 1024,
        "intermediate_size": 2816,
        "num_hidden_layers": 8,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "max_position_embeddings": 2048,
    },
    num_samples=4096,
    words_per_turn=60,
    num_epochs=2,
    effective_batch_size=64,
    max_seq_len=1024,
    max_batch_len=16384,
    learning_rate=1e-4,
    run_timeout_s=240,
    # bf16 and non-deterministic CUDA kernels (atomics in backward): close, not bit-equal.
    loss_rel_tolerance=2e-2,
)
DRY_RUN_PLAN = Plan(
    # 16 steps an epoch: the SIGTERM (sent once the metrics log shows a quarter of the last
    # epoch) must land before the epoch ends; with 4 steps a loaded machine's CPU run finished
    # the epoch first and the run completed instead of saving on demand.
    device="cpu",
    nproc=1,
    sizes={},
    num_samples=64,
    words_per_turn=14,
    num_epochs=2,
    effective_batch_size=4,
    max_seq_len=512,
    max_batch_len=2048,
    learning_rate=1e-3,
    run_timeout_s=600,
    loss_rel_tolerance=1e-3,
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def source_env(device: str) -> dict[str, str]:
    """This checkout on the path (launcher and operator from source), offline, quiet."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PET_", "SFT_"))}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "trainer-image"), str(ROOT / "operator"), str(ROOT)]
        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    if device == "cpu":
        env["OMP_NUM_THREADS"] = "1"
    return env


# --- versions ---------------------------------------------------------------------------------

_GROUP_TIMEOUT_PROBE = """
import json, sys, torch, torch.distributed as dist
device = sys.argv[1]
if device == "cuda":
    torch.cuda.set_device(0)
dist.init_process_group()  # as instructlab-training 0.16.2's main_ds: no backend, no timeout
backend = dist.distributed_c10d._get_default_group()._get_backend(torch.device(device))
print(json.dumps({"backend": type(backend).__name__,
                  "timeout_s": backend.options._timeout.total_seconds()}))
dist.destroy_process_group()
"""


def collective_timeout(device: str) -> dict[str, Any]:
    """The timeout of a 1-rank group made as main_ds makes it (INSTRUCTLAB_NCCL_TIMEOUT_MS unset)."""
    env = source_env(device)
    env.pop("INSTRUCTLAB_NCCL_TIMEOUT_MS", None)
    env.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    )
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run(
        [sys.executable, "-c", _GROUP_TIMEOUT_PROBE, device], env=env, capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def versions(device: str) -> dict[str, Any]:
    import torch

    from sft_trainer import gpu_preflight

    found: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "device": device,
    }
    try:
        from importlib.metadata import version

        found["instructlab_training"] = version("instructlab-training")
    except Exception as error:  # noqa: BLE001 - reported, not fatal
        found["instructlab_training"] = f"unknown ({error})"
    driver, driver_error = gpu_preflight.driver_cuda_version()
    found["driver_cuda"] = gpu_preflight.cuda_version_text(driver) if driver else None
    found["driver_error"] = driver_error
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version,name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        )
        found["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    if device == "cuda":
        found["nccl"] = ".".join(str(part) for part in torch.cuda.nccl.version())
        found["gpu"] = torch.cuda.get_device_name(0)
        found["gpus_visible"] = torch.cuda.device_count()
    found["collective_timeout"] = collective_timeout(device)
    return found


# --- assets and config ------------------------------------------------------------------------


def build_assets(work: Path, plan: Plan) -> tuple[Path, Path, int]:
    samples = make_messages(plan.num_samples, words_per_turn=plan.words_per_turn)
    corpus = [message["content"] for sample in samples for message in sample["messages"]]
    model_dir = write_tiny_model(work / "assets" / "model", corpus, **plan.sizes)
    data_path = write_messages_jsonl(work / "assets" / "data.jsonl", samples)
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as weights:
        params = sum(_numel(weights.get_slice(name).get_shape()) for name in weights.keys())
    return model_dir, data_path, params


def _numel(shape: list[int]) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


def training_args(
    plan: Plan, model_dir: Path, data_path: Path, ckpt: Path, data_dir: Path | None = None
) -> dict[str, Any]:
    args: dict[str, Any] = {
        "model_path": str(model_dir),
        "data_path": str(data_path),
        "ckpt_output_dir": str(ckpt),
        "data_output_dir": str(data_dir or ckpt / "data"),
        "num_epochs": plan.num_epochs,
        "max_seq_len": plan.max_seq_len,
        "max_batch_len": plan.max_batch_len,
        "effective_batch_size": plan.effective_batch_size,
        "learning_rate": plan.learning_rate,
        "data_process_num_cpu_procs": 1,
        "fsdp_options": {"sharding_strategy": "FULL_SHARD"},
    }
    if plan.device == "cuda" and importlib.util.find_spec("flash_attn") is None:
        # PyPI has no flash-attn wheel: instructlab-training's path without it (padded batches).
        args["disable_flash_attn"] = True
    return args


def write_config(path: Path, args: dict[str, Any]) -> Path:
    path.write_text(
        json.dumps(
            {
                contract.CONFIG_KEY_JOB_NAME: "gpu-smoke",
                contract.CONFIG_KEY_NAMESPACE: "bench",
                contract.CONFIG_KEY_NUM_EPOCHS: args["num_epochs"],
                contract.CONFIG_KEY_RETENTION: None,
                contract.CONFIG_KEY_TRAINING_ARGS: args,
            }
        )
    )
    return path


# --- runs -------------------------------------------------------------------------------------


@dataclass
class Run:
    name: str
    process: subprocess.Popen
    log_path: Path
    started: float  # time.time()
    started_monotonic: float
    handle: Any = field(repr=False)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, chars: int = 3000) -> str:
        return f"--- {self.name} log tail ---\n{self.log()[-chars:]}"

    def wait_for(self, probe, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not probe():
            if self.process.poll() is not None:
                raise SmokeFailure(f"{self.name} exited {self.process.returncode} before {what}\n{self.tail()}")
            if time.monotonic() > deadline:
                raise SmokeFailure(f"{self.name}: no {what} within {timeout:.0f}s\n{self.tail()}")
            time.sleep(0.2)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SmokeFailure(f"{self.name} still running after {timeout:.0f}s\n{self.tail()}") from None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=60)
        self.handle.close()


class SmokeFailure(Exception):
    pass


def start(name: str, argv: list[str], env: dict[str, str], work: Path) -> Run:
    log_path = work / f"{name}.log"
    handle = open(log_path, "ab")
    process = subprocess.Popen(
        argv, env=env, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=work
    )
    return Run(
        name=name,
        process=process,
        log_path=log_path,
        started=time.time(),
        started_monotonic=time.monotonic(),
        handle=handle,
    )


def start_launcher(name: str, plan: Plan, config: Path, work: Path, port: int) -> Run:
    """The launcher as PID 1 of a pod sees it: the StatefulSet's env (contract names)."""
    env = source_env(plan.device)
    env.update(
        {
            contract.ENV_NNODES: "1",
            contract.ENV_NPROC_PER_NODE: str(plan.nproc),
            contract.ENV_MASTER_ADDR: "127.0.0.1",
            contract.ENV_MASTER_PORT: str(port),
            contract.ENV_RDZV_ENDPOINT: f"127.0.0.1:{port}",
            contract.ENV_RDZV_ID: name,
            contract.ENV_POD_NAME: "gpu-smoke-0",
            contract.ENV_CONFIG_PATH: str(config),
            contract.ENV_DEVICE: plan.device,
            contract.ENV_TERMINATION_LOG: str(work / f"{name}.termination-log"),
            "HF_HOME": str(work / "hf"),
        }
    )
    return start(name, [sys.executable, "-m", "sft_trainer.launcher"], env, work)


_BARE = """
import json, sys
from contextlib import nullcontext
from pathlib import Path
from instructlab.training import TorchrunArgs, run_training
from sft_trainer import launch_config
config = launch_config.load_config(Path(sys.argv[1]))
cpu = sys.argv[2] == "cpu"
args = launch_config.build_training_args(config, cpu=cpu)
context = nullcontext()
if cpu:  # CPU-only torch: the launcher's CPU patches are what let main_ds run at all
    from sft_trainer import cpu_mode
    context = cpu_mode.launcher_side()
with context:
    run_training(TorchrunArgs(nnodes=1, nproc_per_node=int(sys.argv[3]), node_rank=0,
                              rdzv_id="bare", rdzv_endpoint=f"127.0.0.1:{sys.argv[4]}"), args)
"""


def start_bare(plan: Plan, config: Path, work: Path) -> Run:
    """instructlab-training's own run_training (torchrun + main_ds) with the same TrainingArgs."""
    return start(
        "bare",
        [sys.executable, "-c", _BARE, str(config), plan.device, str(plan.nproc), str(free_port())],
        source_env(plan.device),
        work,
    )


def steps_of(root: Path, offset: int = 0) -> list[ck.StepRecord]:
    return ck.read_metrics_log(ck.metrics_log_path(root), offset).steps


def idle(run: Run) -> bool:
    return "idling until the job is scaled down" in run.log()


def stop_idle_launcher(run: Run) -> int:
    run.process.send_signal(signal.SIGTERM)
    return run.wait(120)


def timestamp(step: ck.StepRecord) -> float | None:
    if not step.timestamp:
        return None
    return datetime.fromisoformat(step.timestamp.replace("Z", "+00:00")).timestamp()


def throughput(steps: list[ck.StepRecord], started: float) -> dict[str, Any]:
    """Samples/s as instructlab-training logs it (median of its per-step overall_throughput,
    the first step left out: compilation and warm-up), and from the step timestamps."""
    rates = [s.overall_throughput for s in steps[1:] if s.overall_throughput]
    stamps = [timestamp(s) for s in steps]
    figures: dict[str, Any] = {"steps": len(steps), "samples_per_s_logged": statistics.median(rates) if rates else None}
    if len(steps) > 1 and None not in stamps and stamps[-1] > stamps[0]:
        figures["samples_per_s_timestamps"] = (steps[-1].samples_seen - steps[0].samples_seen) / (
            stamps[-1] - stamps[0]
        )
    if stamps and stamps[0] is not None:
        figures["first_step_after_s"] = stamps[0] - started
    return figures


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def smoke(plan: Plan, work: Path) -> dict[str, Any]:
    result: dict[str, Any] = {
        "mode": "dry-run" if plan.device == "cpu" else "gpu",
        "plan": plan.__dict__,
        "checks": {},
        "fsdp_state_dict_type": os.environ.get("FSDP_STATE_DICT_TYPE"),
    }
    checks = result["checks"]
    t0 = time.monotonic()
    result["versions"] = versions(plan.device)
    print(f"versions: {json.dumps(result['versions'])}", flush=True)
    if plan.device == "cuda" and result["versions"].get("gpus_visible", 0) < plan.nproc:
        raise SmokeFailure(f"needs {plan.nproc} GPU(s), sees {result['versions'].get('gpus_visible')}")

    model_dir, data_path, params = build_assets(work, plan)
    result["model"] = {
        "parameters": params,
        "samples": plan.num_samples,
        "epochs": plan.num_epochs,
        "steps_per_epoch": plan.steps_per_epoch,
    }
    print(f"model: {json.dumps(result['model'])}", flush=True)
    runs: dict[str, Any] = {}
    result["runs"] = runs

    # 1. Uninterrupted, to completion.
    ref_ckpt = work / "reference"
    ref_config = write_config(work / "reference.json", training_args(plan, model_dir, data_path, ref_ckpt))
    run = start_launcher("reference", plan, ref_config, work, free_port())
    try:
        run.wait_for(lambda: idle(run), "training to finish", plan.run_timeout_s)
        runs["reference"] = {"wall_s": time.monotonic() - run.started_monotonic}
        checks["reference exits 0 after idling"] = stop_idle_launcher(run) == contract.EXIT_OK
    finally:
        run.stop()
    ref_steps = steps_of(ref_ckpt)
    runs["reference"].update(throughput(ref_steps, run.started))
    marker = ck.read_completion_marker(ref_ckpt)
    tree = ck.scan_checkpoints(ref_ckpt)
    checks["completion marker"] = (
        marker is not None
        and marker.num_epochs == plan.num_epochs
        and marker.samples_seen == plan.num_samples * plan.num_epochs
    )
    final = tree.hf_checkpoints[-1] if tree.hf_checkpoints else None
    checks["final hf checkpoint complete"] = (
        final is not None
        and marker is not None
        and marker.final_checkpoint is not None
        and marker.final_checkpoint.endswith(final.name)
        and (ref_ckpt / ck.HF_FORMAT_DIR / final.name / "config.json").is_file()
    )
    checks["metrics log: every step of every epoch"] = [(s.epoch, s.samples_seen) for s in ref_steps][-1:] == [
        (plan.num_epochs - 1, plan.num_samples * plan.num_epochs)
    ] and len(ref_steps) == plan.steps_per_epoch * plan.num_epochs
    runs["reference"]["final_loss"] = ref_steps[-1].avg_loss if ref_steps else None

    # 2. SIGTERM in the middle of the last epoch, then resume.
    job_ckpt = work / "preempted"
    job_config = write_config(work / "preempted.json", training_args(plan, model_dir, data_path, job_ckpt))
    # A quarter in: the metrics log is read every 0.2 s, and the rest of the epoch must outlast
    # that and the signal's way to the workers.
    into = max(1, plan.steps_per_epoch // 4)
    run = start_launcher("preempted", plan, job_config, work, free_port())
    try:
        run.wait_for(
            lambda: sum(s.epoch == plan.num_epochs - 1 for s in steps_of(job_ckpt)) >= into,
            f"{into} steps into epoch {plan.num_epochs}",
            plan.run_timeout_s,
        )
        signalled = time.monotonic()
        run.process.send_signal(signal.SIGTERM)  # the kubelet: PID 1 only
        code = run.wait(plan.run_timeout_s)
        save_s = time.monotonic() - signalled
    finally:
        run.stop()
    checks["SIGTERM: exit 3 after an on-demand save"] = code == contract.EXIT_PREEMPTED
    saved = ck.scan_checkpoints(job_ckpt).latest_full_state
    checks["SIGTERM: a complete mid-epoch full state"] = bool(
        saved is not None and saved.complete and saved.metadata is not None and saved.metadata.mid_epoch
    )
    size = dir_bytes(job_ckpt / ck.FULL_STATE_DIR / saved.name) if saved else 0
    runs["preempted"] = {
        "save_s": save_s,
        "full_state_bytes": size,
        "full_state_bytes_per_param": size / params,
        "write_mb_per_s": size / 1e6 / save_s if save_s else None,
        "saved_samples_seen": saved.metadata.samples_seen if saved and saved.metadata else None,
    }
    run1 = [(s.epoch, s.samples_seen) for s in steps_of(job_ckpt)]

    run = start_launcher("resumed", plan, job_config, work, free_port())
    try:
        run.wait_for(lambda: idle(run), "the resumed run to finish", plan.run_timeout_s)
        runs["resumed"] = {"wall_s": time.monotonic() - run.started_monotonic}
        stop_idle_launcher(run)
    finally:
        run.stop()
    record = ck.read_run_records(job_ckpt)[-1]
    resumed_steps = steps_of(job_ckpt, record.metrics_log_offset)
    runs["resumed"].update(throughput(resumed_steps, run.started))
    runs["resumed"]["resumed_from"] = record.resumed_from
    reference = [(s.epoch, s.samples_seen) for s in ref_steps]
    checks["interrupted run: the reference's steps"] = run1 == reference[: len(run1)]
    samples = [seen for _, seen in reference]
    after = (
        samples.index(saved.metadata.samples_seen) + 1
        if saved and saved.metadata and saved.metadata.samples_seen in samples
        else None
    )
    checks["resume: exactly the reference's steps after the save"] = (
        after is not None
        and record.resumed_from == (saved.name if saved else None)
        and [(s.epoch, s.samples_seen) for s in resumed_steps] == reference[after:]
    )
    ref_losses = [s.avg_loss for s in ref_steps[after:]] if after is not None else []
    diffs = [
        abs(a.avg_loss - b) / max(abs(b), 1e-12)
        for a, b in zip(resumed_steps, ref_losses)
        if a.avg_loss is not None and b is not None
    ]
    runs["resumed"]["max_loss_rel_diff"] = max(diffs) if diffs else None
    checks["resume: the reference's losses"] = (
        bool(diffs) and len(diffs) == len(ref_losses) and max(diffs) <= plan.loss_rel_tolerance
    )

    # 3. The same TrainingArgs and processed data, without the launcher.
    bare_ckpt = work / "bare"
    bare_config = write_config(
        work / "bare.json", training_args(plan, model_dir, data_path, bare_ckpt, data_dir=ref_ckpt / "data")
    )
    run = start_bare(plan, bare_config, work)
    try:
        code = run.wait(plan.run_timeout_s)
        runs["bare"] = {"wall_s": time.monotonic() - run.started_monotonic}
    finally:
        run.stop()
    bare_steps = steps_of(bare_ckpt)
    runs["bare"].update(throughput(bare_steps, run.started))
    checks["bare run: exit 0, the same steps"] = (
        code == 0 and [(s.epoch, s.samples_seen) for s in bare_steps] == reference
    )
    ours, theirs = runs["reference"].get("samples_per_s_logged"), runs["bare"].get("samples_per_s_logged")
    result["launcher_overhead_pct"] = (100 * (theirs - ours) / theirs) if ours and theirs else None
    result["total_s"] = time.monotonic() - t0
    result["ok"] = all(checks.values())
    return result


def figures(result: dict[str, Any]) -> list[tuple[str, str]]:
    v, runs, model = result["versions"], result["runs"], result["model"]

    def num(value: Any, fmt: str = ".1f") -> str:
        return "-" if value is None else format(value, fmt)

    timeout = v.get("collective_timeout", {})
    rows = [
        (
            "mode",
            result["mode"]
            + (
                " (CPU, a few steps on a shared machine: the checks count, the timings are no measurement)"
                if result["mode"] == "dry-run"
                else ""
            ),
        ),
        ("FSDP_STATE_DICT_TYPE", result.get("fsdp_state_dict_type") or "unset (accelerate: FULL_STATE_DICT)"),
        ("driver (nvidia-smi)", v.get("nvidia_smi", "-")),
        ("driver CUDA (cuDriverGetVersion)", v.get("driver_cuda") or f"none ({v.get('driver_error')})"),
        ("torch / its CUDA / NCCL", f"{v['torch']} / {v.get('torch_cuda') or '-'} / {v.get('nccl', '-')}"),
        ("instructlab-training", v.get("instructlab_training", "-")),
        ("GPU", v.get("gpu", "-")),
        (
            "collective timeout as main_ds gets it",
            f"{num(timeout.get('timeout_s'), '.0f')} s ({timeout.get('backend', timeout.get('error'))})",
        ),
        ("model parameters", f"{model['parameters'] / 1e6:.1f} M"),
        ("samples x epochs (steps/epoch)", f"{model['samples']} x {model['epochs']} ({model['steps_per_epoch']})"),
        ("launcher run: wall to idle", f"{num(runs['reference'].get('wall_s'))} s"),
        ("launcher run: first step after", f"{num(runs['reference'].get('first_step_after_s'))} s"),
        ("launcher run: samples/s (logged, median)", num(runs["reference"].get("samples_per_s_logged"))),
        ("bare run_training: wall to exit", f"{num(runs['bare'].get('wall_s'))} s"),
        ("bare run_training: first step after", f"{num(runs['bare'].get('first_step_after_s'))} s"),
        ("bare run_training: samples/s (logged, median)", num(runs["bare"].get("samples_per_s_logged"))),
        ("launcher overhead in samples/s", f"{num(result.get('launcher_overhead_pct'))} %"),
        ("SIGTERM: save to exit 3", f"{num(runs['preempted'].get('save_s'))} s"),
        (
            "SIGTERM: full state written",
            f"{runs['preempted'].get('full_state_bytes', 0) / 1e6:.1f} MB "
            f"({num(runs['preempted'].get('write_mb_per_s'))} MB/s incl. the step it waited for)",
        ),
        ("SIGTERM: full state bytes per parameter", num(runs["preempted"].get("full_state_bytes_per_param"))),
        ("resume: first step after", f"{num(runs['resumed'].get('first_step_after_s'))} s"),
        ("resume: max loss rel. difference", num(runs["resumed"].get("max_loss_rel_diff"), ".2e")),
        ("total", f"{num(result.get('total_s'))} s"),
    ]
    rows += [(f"check: {name}", "ok" if passed else "FAILED") for name, passed in result["checks"].items()]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dry-run", action="store_true", help="the same steps on CPU (SFT_DEVICE=cpu, the tiny model, few steps)"
    )
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("--work", type=Path, help="working directory (default: a temporary one, removed)")
    parser.add_argument(
        "--fsdp-state-dict-type",
        choices=["FULL_STATE_DICT", "SHARDED_STATE_DICT"],
        help="accelerate's FSDP_STATE_DICT_TYPE for every run (full states written by "
        "every rank instead of gathered on rank 0; docs/trainer.md, big models)",
    )
    args = parser.parse_args(argv)
    if args.fsdp_state_dict_type:
        os.environ["FSDP_STATE_DICT_TYPE"] = args.fsdp_state_dict_type
    plan = DRY_RUN_PLAN if args.dry_run else GPU_PLAN
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-smoke-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = smoke(plan, work)
    except SmokeFailure as failure:
        print(f"gpu_smoke FAILED: {failure}", flush=True)
        if args.json:
            args.json.write_text(json.dumps({"ok": False, "error": str(failure)}, indent=1))
        return 1
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    width = max(len(name) for name, _ in figures(result))
    print("\n" + "\n".join(f"{name:<{width}}  {value}" for name, value in figures(result)))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
