"""sft-trainer: the process each SFTJob pod runs (PID 1).

env contract (contract.py) + training config -> process data once -> exact resume ->
instructlab-training run_training (config algorithm osft: rhai-innovation-mini-trainer's, see
osft_launch) -> exit code (contract.EXIT_*), or idle once finished.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import re
import shutil
import signal
import sys
import threading
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path

from sft_core import checkpoints, contract

from . import (
    checkpoint_owner,
    collective_timeout,
    data_once,
    launch_config,
    outcome,
    resume,
    termination,
    transfer_wait,
)
from .errors import ConfigError, LauncherError, Preempted, TrainingFailed
from .pod_state import trainer_started
from .rendezvous import announce_rendezvous_id, check_port_free, verify_rendezvous_id, wait_reachable
from .topology import Topology, topology_from_env

log = logging.getLogger("sft_trainer")

DEVICES = ("cuda", "cpu")
RETENTION_INTERVAL_SECONDS = 30.0
TERMINATION_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _now() -> datetime:
    return datetime.now(timezone.utc)


# What the termination message says when run() returns normally (exit 0 or 3); errors say
# their own message (main()).
_exit_note: str | None = None


def note_exit(message: str) -> None:
    global _exit_note
    _exit_note = message


def finished_note(marker: checkpoints.CompletionMarker) -> str:
    text = f"finished: {marker.num_epochs} epochs, {marker.samples_seen} samples"
    return f"{text}, final checkpoint {marker.final_checkpoint}" if marker.final_checkpoint else text


_handler_pid = 0  # the launcher's pid, set where _raise_preempted is installed


def _raise_preempted(signum: int, _frame) -> None:
    if os.getpid() != _handler_pid:
        # A forked child (datasets' multiprocessing pool workers while data is processed)
        # inherits this handler. The pool stops its workers with SIGTERM and joins them: a worker
        # that raised instead (and caught it as a task error) would block forever, and so would
        # the launcher. Die by the signal, as by default.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise Preempted(f"received {signal.Signals(signum).name} before training ran; nothing to save, a restart resumes")


def idle(reason: str) -> int:
    """Stay up (a StatefulSet restarts exited pods) until the operator scales the job down."""
    log.info("%s; idling until the job is scaled down", reason)
    stop = threading.Event()
    for sig in TERMINATION_SIGNALS:
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(3600):
        pass
    log.info("termination signal while idle: exiting")
    return contract.EXIT_OK


def ensure_torchrun_on_path(env: MutableMapping[str, str]) -> None:
    # run_training starts `torchrun` by name, and returns normally if it cannot be started.
    if shutil.which("torchrun", path=env.get("PATH")):
        return
    beside_python = Path(sys.executable).parent
    if (beside_python / "torchrun").exists():
        env["PATH"] = f"{beside_python}{os.pathsep}{env.get('PATH', '')}"
        return
    raise ConfigError("PATH", "torchrun is not on PATH (install torch in this environment)")


def torchrun_env(topology: Topology, rendezvous_timeout: float, env: MutableMapping[str, str]) -> None:
    """Env for run_training's torchrun: node rank, rendezvous timeout, a per-job trigger file."""
    env[contract.ENV_NODE_RANK] = str(topology.node_rank)
    env.setdefault("PET_RDZV_CONF", f"timeout={int(rendezvous_timeout)}")
    trigger_env(topology, env)


def trigger_env(topology: Topology, env: MutableMapping[str, str]) -> None:
    """The on-demand checkpoint's trigger file name, per job (both libraries read it)."""
    safe_id = re.sub(r"[^A-Za-z0-9_.-]", "_", topology.rdzv_id)
    env.setdefault("CHECKPOINT_TRIGGER_FILENAME", f"sft-checkpoint-requested-{safe_id}")


@contextmanager
def retention_thread(root: Path, keep: int | None, may_delete=None) -> Iterator[None]:
    """Node 0 prunes full states while training runs, so long runs do not fill the disk."""
    if keep is None:
        yield
        return
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(RETENTION_INTERVAL_SECONDS):
            prune(root, keep, may_delete)

    thread = threading.Thread(target=loop, name="full-state-retention", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=60)


def prune(root: Path, keep: int | None, may_delete=None) -> None:
    """Retention; ``may_delete``: checkpoint_owner.retention_filter (only the owners' states)."""
    if keep is None:
        return
    try:
        deleted = checkpoints.prune_full_states(root, keep, may_delete)
    except OSError as error:
        log.warning("full-state retention failed (will retry): %s", error)
        return
    if deleted:
        log.info("full-state retention (keep %d): deleted %s", keep, deleted)


def write_completion(root: Path, num_epochs: int) -> checkpoints.CompletionMarker:
    marker = outcome.completion_marker(checkpoints.scan_checkpoints(root), num_epochs, _now())
    checkpoints.write_completion_marker(root, marker)
    return marker


def run(env: Mapping[str, str]) -> int:
    global _handler_pid
    trainer_started(env)  # the reporter waits for this process's exit before its last publish
    device = env.get(contract.ENV_DEVICE, "cuda") or "cuda"
    if device not in DEVICES:
        raise ConfigError(contract.ENV_DEVICE, f"must be one of {DEVICES}, got {device!r}")
    cpu = device == "cpu"
    topology = topology_from_env(env)
    config = launch_config.load_config(Path(env.get(contract.ENV_CONFIG_PATH) or contract.CONFIG_PATH))
    if config.sources or (config.export or {}).get("restore"):
        # Before anything reads the model, the data or the checkpoint directory: the transfer
        # sidecar fetches them (pod 0) and restores an exported full state (transfer_wait).
        _handler_pid = os.getpid()
        for sig in TERMINATION_SIGNALS:
            signal.signal(sig, _raise_preempted)
        transfer_wait.wait_for_transfers(config.model_dump(by_alias=True))
    osft = config.algorithm == "osft"
    if osft:
        from . import osft_launch

        # Before mini-trainer is imported: it reads the trigger's name once, at import.
        trigger_env(topology, os.environ)
        plan = osft_launch.build(config.training_args, cpu=cpu, num_epochs=config.num_epochs)
        training_args = plan.data_args  # what the data step and the input checks read
    else:
        training_args = launch_config.build_training_args(config, cpu=cpu)
    root = Path(training_args.ckpt_output_dir)
    num_epochs = training_args.num_epochs
    log.info(
        "node %d of %d (%s), %s mode, checkpoints in %s",
        topology.node_rank,
        topology.nnodes,
        env.get(contract.ENV_POD_NAME),
        device,
        root,
    )

    # Before anything is read from the directory or written to it: another job's run there is
    # neither reported as ours nor resumed from (exit 2 names the directory and that job).
    ownership = checkpoint_owner.check(root, config)
    if (completed := checkpoints.read_completion_marker(root)) is not None:
        if topology.node_rank == 0:
            checkpoint_owner.record(root, config, ownership, now=_now)
        note_exit(finished_note(completed))
        return idle(f"{checkpoints.COMPLETION_MARKER_FILE} exists: training already finished")

    if not cpu:
        # Before the data and the run: a pod without usable GPUs fails once, with the reason.
        from . import gpu_preflight

        gpu_preflight.check(env, topology.nproc_per_node, log)
    timeout_seconds, timeout_source = collective_timeout.collective_timeout_seconds(env)
    log.info("collective (NCCL/gloo) timeout: %gs (%s)", timeout_seconds, timeout_source)
    launch_config.check_inputs_exist(training_args)
    if topology.node_rank == 0:  # after the input checks: a typo in a path claims nothing
        checkpoint_owner.record(root, config, ownership, now=_now)
    may_delete = checkpoint_owner.retention_filter(root, config)
    ensure_torchrun_on_path(os.environ)
    torchrun_env(topology, config.rendezvous_timeout_seconds, os.environ)
    # mini-trainer saves full states only on a signal.
    epoch_full_states = not osft and (
        training_args.checkpoint_at_epoch and training_args.accelerate_full_state_at_epoch
    )

    _handler_pid = os.getpid()
    for sig in TERMINATION_SIGNALS:
        signal.signal(sig, _raise_preempted)
    data_once.prepare_data(
        root,
        training_args,
        topology.node_rank,
        timeout=config.data_wait_timeout_seconds,
        stall_timeout=config.data_stall_timeout_seconds,
        attempts=config.data_processing_attempts,
    )
    is_node0 = topology.node_rank == 0
    if is_node0:
        tree = checkpoints.scan_checkpoints(root)
        if epoch_full_states and outcome.already_finished(tree, num_epochs):
            note_exit(finished_note(write_completion(root, num_epochs)))
            return idle("the last epoch's full state exists: training already finished")
        if osft and osft_launch.finished_before(tree, root, num_epochs):
            note_exit(finished_note(write_completion(root, num_epochs)))
            return idle("the metrics log ends at the last step and its model is saved: training already finished")
        # Before the run record: a clear reason instead of torchrun's EADDRINUSE traceback.
        check_port_free(topology.rdzv_port)
        prune(root, config.full_state_retention, may_delete)
        record = resume.prepare_resume(root, now=_now)
        log.info(
            "run starts at epoch %d, %d steps in, %d samples seen (from %s)",
            record.start_epoch,
            record.steps_into_epoch,
            record.start_samples_seen,
            record.resumed_from or "scratch",
        )
    else:
        # Node 0 opens the endpoint only after its data and resume preparation.
        wait_reachable(
            topology.rdzv_host,
            topology.rdzv_port,
            timeout=config.rendezvous_timeout_seconds,
            env_name=topology.endpoint_env,
        )
        # ... and it is this job's rendezvous, not another job's on the same port and network.
        verify_rendezvous_id(
            topology.rdzv_host,
            topology.rdzv_port,
            topology.rdzv_id,
            timeout=config.rendezvous_timeout_seconds,
            env_name=topology.endpoint_env,
        )
    before = checkpoints.scan_checkpoints(root).latest_full_state

    cpu_context: AbstractContextManager[None]
    if osft:
        cpu_context = osft_launch.launcher_side(cpu)
        worker_log = osft_launch.worker_log(root, topology.node_rank)

        def train() -> None:
            osft_launch.run_training(topology.torchrun_kwargs(), plan)
    else:
        from instructlab.training import TorchrunArgs, run_training

        cpu_context = nullcontext()
        if cpu:
            from . import cpu_mode

            cpu_context = cpu_mode.launcher_side()
        worker_log = root / f"full_logs_global{topology.node_rank}.log"

        def train() -> None:
            run_training(TorchrunArgs(**topology.torchrun_kwargs()), training_args)

    announcing = announce_rendezvous_id(topology.rdzv_port, topology.rdzv_id) if is_node0 else nullcontext()
    # run_training installs its own handlers (on-demand checkpointing) and restores ours after.
    with (
        cpu_context,
        retention_thread(root, config.full_state_retention if is_node0 else None, may_delete),
        announcing as announcer,
    ):
        try:
            train()
        except (RuntimeError, OSError, ValueError, ImportError) as error:
            if announcer is not None and announcer.foreign_owner() is not None:
                raise announcer.conflict() from error
            raise training_failure(error, worker_log) from error

    tree = checkpoints.scan_checkpoints(root)
    result = outcome.decide_outcome(before, tree, num_epochs, epoch_full_states)
    if is_node0:
        prune(root, config.full_state_retention, may_delete)
    if result is outcome.Outcome.PREEMPTED:
        latest = tree.latest_full_state
        if latest is None or latest.metadata is None:  # never: decide_outcome found this state
            raise TrainingFailed("preempted, yet no complete full state")
        note_exit(
            f"preempted: saved {latest.path} (epoch "
            f"{latest.metadata.current_epoch + 1} of {num_epochs}, "
            f"{latest.metadata.samples_seen} samples seen); a restart resumes"
        )
        log.info("%s", _exit_note)
        return contract.EXIT_PREEMPTED
    if result is outcome.Outcome.UNFINISHED:
        raise TrainingFailed(
            "run_training returned but the last epoch's full state is missing and no on-demand checkpoint was saved"
        )
    if osft:
        osft_launch.check_finished(root, topology.node_rank, num_epochs)
    if is_node0:
        marker = write_completion(root, num_epochs)
        log.info("finished: %s", marker.model_dump_json())
        note_exit(finished_note(marker))
    else:
        note_exit(f"finished: {num_epochs} epochs (node 0 wrote the completion marker)")
    if osft_launch.signal_received() if osft else stop_requested_during_training():
        # The kubelet's SIGTERM reached run_training's handler after the workers' last check
        # (training ended as the pod was stopped): idling would only hold the pod until SIGKILL.
        log.info("termination signal as training finished: exiting")
        return contract.EXIT_OK
    return idle("training finished")


def stop_requested_during_training() -> bool:
    """Whether run_training's signal handler wrote the on-demand trigger that no worker consumed
    (it clears a stale one when it starts); the trigger is removed."""
    from instructlab.training import on_demand_checkpoint

    if not on_demand_checkpoint.trigger_file_exists():
        return False
    on_demand_checkpoint.remove_trigger_file()
    return True


def training_failure(error: BaseException, log_file: Path) -> TrainingFailed:
    """What failed, from this node's worker log (the exception and where it was raised), not
    run_training's "see the training logs"."""
    cause = termination.worker_failure(termination.read_tail(log_file))
    if cause is None:
        cause = " ".join(str(error).split("\n\n")[0].split())
    return TrainingFailed(f"training failed: {cause}; log: {log_file}")


def dump_stacks_on_sigquit() -> None:
    """`kill -QUIT <pid>` prints every thread's stack to the pod log and the run goes on: where a
    stuck pod is stuck, without a debugger in the image. Forked data workers inherit it."""
    faulthandler.register(signal.SIGQUIT, all_threads=True)


def main(argv: list[str] | None = None) -> int:
    del argv  # configured by env and the config file only
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s sft-trainer %(levelname)s %(message)s"
    )
    dump_stacks_on_sigquit()
    # One line for every exit (the pod's terminated.message); a crash that cannot get here
    # (SIGKILL, OOM) leaves the file empty and the kubelet falls back to the log tail.
    global _exit_note
    _exit_note = None
    message_path = termination.path_from_env(os.environ)
    try:
        code = run(os.environ)
        message = _exit_note or f"exited with code {code}"
    except LauncherError as error:
        log.error("%s (exit %d)", error.message, error.exit_code)
        code, message = error.exit_code, error.message
    except Exception as error:  # a launcher bug: say what and where; the traceback is logged
        log.exception("launcher crashed")
        code, message = contract.EXIT_TRAINING_FAILED, termination.describe_crash(error)
    termination.write(message, message_path)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
