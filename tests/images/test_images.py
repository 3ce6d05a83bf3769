"""Both images, built for real, keep their promises: numeric non-root user, a read-only root
filesystem works, the entrypoints run, the build is cached, and the trainer image trains the tiny
model to completion the way a StatefulSet pod runs it."""

from __future__ import annotations

import hashlib
import json

import pytest
from images_harness import ROOT, docker, run_build

pytestmark = [pytest.mark.images, pytest.mark.timeout(3600)]

NON_ROOT = "65532:65532"
# --read-only as readOnlyRootFilesystem: true; a tmpfs /tmp like an emptyDir the chart can mount.
READ_ONLY = ["--read-only", "--tmpfs", "/tmp:rw,mode=1777"]


def run(image: str, *args: str, entrypoint: str | None = None, timeout: float = 600) -> str:
    cmd = ["run", "--rm", "--network", "none", *READ_ONLY]
    if entrypoint is not None:
        cmd += ["--entrypoint", entrypoint]
    return docker(*cmd, image, *args, timeout=timeout).stdout


def config(image: str) -> dict:
    return json.loads(docker("image", "inspect", "--format", "{{json .Config}}", image).stdout)


def image_id(image: str) -> str:
    return docker("image", "inspect", "--format", "{{.Id}}", image).stdout.strip()


def sources_digest() -> str:
    """What the builds read from the tree (to tell a cache miss from a concurrent edit)."""
    digest = hashlib.sha256()
    paths = [
        ROOT / "constraints.txt",
        ROOT / "Dockerfile",
        ROOT / "trainer-image" / "Dockerfile",
        ROOT / "trainer-image" / "pyproject.toml",
    ]
    for tree in (ROOT / "core", ROOT / "operator", ROOT / "trainer-image" / "sft_trainer"):
        paths += sorted(p for p in tree.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in paths:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


# --- the operator image ---------------------------------------------------------------------


def test_operator_image_runs_as_numeric_non_root(operator_image: str) -> None:
    cfg = config(operator_image)
    assert cfg["User"] == NON_ROOT
    assert cfg["Entrypoint"] == ["sft-operator-controller", "run"]
    assert run(operator_image, "-u", entrypoint="id").strip() == "65532"


def test_operator_cli_and_reporter_run_on_a_read_only_root(operator_image: str) -> None:
    assert "Run the operator" in run(operator_image, "--help")
    # The reporter sidecar runs from this image: `python -m sft_reporter`.
    assert "--config" in run(operator_image, "-m", "sft_reporter", "--help", entrypoint="python")
    # Read-only really is read-only, and the image has no pip to install anything at run time.
    probe = docker(
        "run",
        "--rm",
        "--network",
        "none",
        *READ_ONLY,
        "--entrypoint",
        "sh",
        operator_image,
        "-c",
        "touch /opt/sft-operator/x 2>/dev/null && echo writable; "
        "python -c 'import pip' 2>/dev/null && echo pip; echo done",
    ).stdout
    assert probe.split() == ["done"], probe


# --- the trainer image (CPU flavour) ---------------------------------------------------------


def test_trainer_image_runs_as_numeric_non_root_with_the_launcher_as_entrypoint(trainer_image: str) -> None:
    cfg = config(trainer_image)
    assert cfg["User"] == NON_ROOT
    assert cfg["Entrypoint"] == ["sft-trainer"] and not cfg.get("Cmd")
    assert run(trainer_image, "-u", entrypoint="id").strip() == "65532"
    env = dict(item.split("=", 1) for item in cfg["Env"])
    assert env["HOME"] == "/tmp" and env["PATH"].startswith("/opt/sft-trainer/bin:")


def test_trainer_imports_and_torchrun_on_a_read_only_root(trainer_image: str) -> None:
    out = run(
        trainer_image,
        "-c",
        "import sft_trainer.launcher, instructlab.training.main_ds, torch, importlib.metadata as m; "
        "print(torch.__version__, torch.version.cuda, m.version('instructlab-training'), "
        "any(d.metadata['Name'].lower().startswith('nvidia-') for d in m.distributions()))",
        entrypoint="python",
    )
    assert out.split() == ["2.13.0+cpu", "None", "0.16.2", "False"], out
    assert "--nproc-per-node" in run(trainer_image, "--help", entrypoint="torchrun")
    assert "sft-trainer" in run(trainer_image, "-c", "command -v sft-trainer", entrypoint="sh")


# --- the build ---------------------------------------------------------------------------------


# Each image installs only what runs in it: the packages importable there, and our distributions.
IMAGE_PACKAGES = {
    "operator": {"sft_core", "sft_models", "sft_operator", "sft_reporter"},
    "trainer": {"sft_core", "sft_models", "sft_trainer"},
}
IMAGE_DISTRIBUTIONS = {
    "operator": ["sft-operator-controller", "sft-operator-core"],
    "trainer": ["sft-operator-core", "sft-trainer"],
}
ALL_OURS = ["devtools", "sft_client", "sft_core", "sft_models", "sft_operator", "sft_reporter", "sft_trainer"]


@pytest.mark.parametrize("which", ["operator", "trainer"])
def test_each_image_holds_only_its_roles_packages(which: str, operator_image: str, trainer_image: str) -> None:
    image = operator_image if which == "operator" else trainer_image
    probe = (
        "import importlib.util, importlib.metadata as m; "
        f"print(sorted(n for n in {ALL_OURS!r} if importlib.util.find_spec(n))); "
        "print(sorted(d.metadata['Name'] for d in m.distributions() if d.metadata['Name'].startswith('sft-')))"
    )
    packages, distributions = run(image, "-c", probe, entrypoint="python").strip().splitlines()
    assert packages == str(sorted(IMAGE_PACKAGES[which])), packages
    assert distributions == str(IMAGE_DISTRIBUTIONS[which]), distributions
    # Neither image carries the client's command line; only the operator image has kopf.
    shell = "command -v sft-operator kubectl-sft; python -c 'import kopf' 2>/dev/null && echo kopf; echo done"
    expected = ["kopf", "done"] if which == "operator" else ["done"]
    assert run(image, "-c", shell, entrypoint="sh").split() == expected


def test_a_second_build_of_unchanged_sources_is_all_cache(built_images: dict[str, str]) -> None:
    images = [built_images["SFT_BASE_IMAGE"], built_images["SFT_OPERATOR_IMAGE"], built_images["SFT_TRAINER_IMAGE"]]
    before = {image: image_id(image) for image in images}
    digest = sources_digest()
    names, log, elapsed = run_build()
    print(f"warm build: {elapsed:.0f} s\n{log}")
    assert names == built_images
    if sources_digest() != digest:
        pytest.fail("the sources changed while this test ran (someone edited the tree); rerun it", pytrace=False)
    assert {image: image_id(image) for image in images} == before, log
    assert "is up to date" in log, log
