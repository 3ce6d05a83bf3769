"""The trainer image trains for real: one single-node CPU run of the tiny model inside the
container, set up the way the operator renders the pod (render_statefulset's trainer container:
its env, its volume mounts; render_configmap's training.json), as uid 65532 with a read-only root
filesystem and no network at all. Ends like a finished pod: the completion marker on the
checkpoint volume, the launcher idling, and exit 0 on SIGTERM (the scale-down)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from images_harness import ROOT, docker

from sft_core import checkpoints as ck
from sft_core import contract
from sft_models.models import parse_job
from sft_models.naming import claim_name
from sft_operator.render import render_configmap
from sft_operator.render_meta import master_addr
from sft_operator.render_pod import render_statefulset

pytestmark = [pytest.mark.images, pytest.mark.timeout(3600)]

EXAMPLE = ROOT / "examples" / "sftjob-tiny-cpu.yaml"
NAMESPACE = "images"
NUM_SAMPLES = 8  # effective batch 4: 2 steps
RUN_TIMEOUT = 1800  # 2 cores shared with other builds: slow, but one small run
IDLE_LOG = "idling until the job is scaled down"


def tiny_job(image: str, **spec: Any) -> Any:
    manifest = yaml.safe_load(EXAMPLE.read_text())
    manifest["metadata"].update(namespace=NAMESPACE, uid="uid-images")
    manifest["spec"].update(nnodes=1, numEpochs=1, **spec)
    manifest["spec"]["pod"]["image"] = image
    return parse_job(manifest)


def rendered_trainer(job: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the pod template, its trainer container) as render_statefulset writes them."""
    pod = render_statefulset(job)["spec"]["template"]
    (trainer,) = [c for c in pod["spec"]["containers"] if c["name"] == contract.TRAINER_CONTAINER]
    return pod, trainer


def docker_run_args(job: Any, *, pod_name: str, checkpoints: Path, config_dir: Path, assets: Path) -> list[str]:
    """The rendered trainer container's env and volumes as `docker run` options (the checkpoint
    claim from ``checkpoints``, the example's model-and-data claim from ``assets``)."""
    pod, trainer = rendered_trainer(job)
    fields = {"metadata.name": pod_name, "metadata.namespace": NAMESPACE}
    args: list[str] = []
    for var in trainer["env"]:
        if "value" in var:
            value = var["value"]
        else:
            path = var["valueFrom"]["fieldRef"]["fieldPath"]
            assert path in fields, f"env {var['name']}: no stand-in for {var['valueFrom']}"
            value = fields[path]
        args += ["--env", f"{var['name']}={value}"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    for mount in trainer["volumeMounts"]:
        volume, target = volumes[mount["name"]], mount["mountPath"]
        ro = ",readonly" if mount.get("readOnly") else ""
        if "persistentVolumeClaim" in volume:
            source = checkpoints if volume["persistentVolumeClaim"]["claimName"] == claim_name(job) else assets
            args += ["--mount", f"type=bind,source={source},target={target}{ro}"]
        elif "configMap" in volume:
            args += ["--mount", f"type=bind,source={config_dir},target={target},readonly"]
        elif "hostPath" in volume:
            args += ["--mount", f"type=bind,source={volume['hostPath']['path']},target={target}{ro}"]
        elif "emptyDir" in volume and target == contract.SHM_MOUNT_PATH:
            args += ["--shm-size", "512m"]
        elif "emptyDir" in volume:
            args += ["--mount", f"type=tmpfs,target={target},tmpfs-mode=0777"]
        else:
            raise AssertionError(f"volume {volume} has no docker stand-in")
    return args


# OSFT: rhai-innovation-mini-trainer in the same image, same read-only root and no network.
@pytest.mark.parametrize("spec", [{}, {"algorithm": "osft", "unfreezeRankRatio": 0.5}], ids=["sft", "osft"])
def test_tiny_model_trains_to_completion_in_the_trainer_image(
    trainer_image: str, tmp_path: Path, container_names: list[str], spec: dict[str, Any]
) -> None:
    assets = tmp_path / "assets"
    subprocess.run(
        [sys.executable, "-m", "devtools.tiny_model", "--out", str(assets), "--samples", str(NUM_SAMPLES)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    # The pod runs as uid 65532: the hostPath model must be readable by others. tiny_model
    # saves model.safetensors with mode 0600 (as root: unreadable in the pod), so open it up.
    for path in assets.rglob("*"):
        path.chmod(path.stat().st_mode | 0o444 | (0o111 if path.is_dir() else 0))
    job = tiny_job(trainer_image, **spec)
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    os.chown(checkpoints, 65532, 65532) if os.geteuid() == 0 else checkpoints.chmod(0o777)
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    for name, text in render_configmap(job)["data"].items():
        (config_dir / name).write_text(text)

    # The kubelet's terminationMessagePath, as a file the pod's user can write.
    termination_log = tmp_path / "termination-log"
    termination_log.touch()
    os.chown(termination_log, 65532, 65532) if os.geteuid() == 0 else termination_log.chmod(0o666)
    _, trainer = rendered_trainer(job)
    # The container's command, as rendered (the image's ENTRYPOINT is the same launcher).
    command = trainer.get("command") or []
    entrypoint = ["--entrypoint", command[0]] if command else []
    pod_name = f"{job.metadata.name}-0"
    name = f"sft-images-{os.getpid()}"
    container_names.append(name)
    docker(
        "run",
        "--detach",
        "--name",
        name,
        "--user",
        "65532:65532",
        "--read-only",
        "--tmpfs",
        "/tmp:rw,mode=1777",
        "--security-opt",
        "no-new-privileges",
        # No network at all: pod 0's rendezvous name resolves to its own loopback.
        "--network",
        "none",
        "--hostname",
        pod_name,
        "--add-host",
        f"{master_addr(job)}:127.0.0.1",
        "--mount",
        f"type=bind,source={termination_log},target=/dev/termination-log",
        *docker_run_args(job, pod_name=pod_name, checkpoints=checkpoints, config_dir=config_dir, assets=assets),
        *entrypoint,
        trainer_image,
        *command[1:],
        *trainer.get("args", []),
    )

    start = time.monotonic()
    while True:
        logs = docker("logs", name, check=False).stdout + docker("logs", name, check=False).stderr
        if IDLE_LOG in logs:
            break
        state = docker("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name).stdout.split()
        if state[0] == "exited":
            pytest.fail(f"the trainer exited {state[1]} before completing:\n{logs[-6000:]}", pytrace=False)
        if time.monotonic() - start > RUN_TIMEOUT:
            pytest.fail(f"not complete after {RUN_TIMEOUT} s:\n{logs[-6000:]}", pytrace=False)
        time.sleep(5)
    elapsed = time.monotonic() - start
    # The scale-down: SIGTERM to PID 1 (the launcher), within the grace period.
    docker("stop", "--time", "60", name, timeout=120)
    exit_code = int(docker("inspect", "--format", "{{.State.ExitCode}}", name).stdout)
    logs = docker("logs", name).stdout + docker("logs", name).stderr
    print(f"tiny run in the trainer image: {elapsed:.0f} s to completion\n{logs[-3000:]}")
    assert exit_code == contract.EXIT_OK, logs[-6000:]
    marker = ck.read_completion_marker(checkpoints)
    assert marker is not None, sorted(str(p.relative_to(checkpoints)) for p in checkpoints.rglob("*"))
    assert list((checkpoints / "hf_format").iterdir()), "no hf_format checkpoint"
    # Everything on the volume belongs to the pod's user.
    owners = {p.stat().st_uid for p in checkpoints.rglob("*")}
    assert owners == {65532}, owners
