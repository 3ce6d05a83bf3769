"""The trainer image's Dockerfile keeps its promises: pinned bases and versions, numeric
non-root user, the launcher as PID 1 in exec form, a build context that has what it copies.
(hadolint runs on both Dockerfiles in test_dockerfiles.py.) No Docker daemon here: nothing is
built."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "trainer-image" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    steps = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            steps.append((keyword.upper(), rest.strip()))
    return steps


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def build_args() -> dict[str, str]:
    return dict(rest.split("=", 1) for keyword, rest in instructions()
                if keyword == "ARG" and "=" in rest)


def test_base_images_are_pinned() -> None:
    args = build_args()
    stages = {rest.split()[-1] for keyword, rest in instructions()
              if keyword == "FROM" and " AS " in rest.upper()}
    for keyword, rest in instructions():
        if keyword != "FROM":
            continue
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0])
        if image in stages:
            continue
        _, _, tag = image.partition(":")
        assert re.search(r"\d+\.\d+\.\d+", tag), f"unpinned base image {image}"


def test_versions_match_the_trainer_extra() -> None:
    args = build_args()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"torch=={args["TORCH_VERSION"]}"' in pyproject
    assert f'"instructlab-training=={args["INSTRUCTLAB_TRAINING_VERSION"]}"' in pyproject
    assert args["INSTRUCTLAB_TRAINING_VERSION"] == "0.16.2"
    runs = " ".join(rest for keyword, rest in instructions() if keyword == "RUN")
    assert '"instructlab-training[cuda]==${INSTRUCTLAB_TRAINING_VERSION}"' in runs
    assert '"accelerate==${ACCELERATE_VERSION}"' in runs


def test_numeric_non_root_user() -> None:
    (user,) = [rest for keyword, rest in final_stage() if keyword == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and gid.isdigit() and int(uid) > 0 and int(gid) > 0, user


def test_launcher_is_pid_1_in_exec_form() -> None:
    (entrypoint,) = [rest for keyword, rest in final_stage() if keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["sft-trainer"]
    assert not [rest for keyword, rest in final_stage() if keyword == "CMD"]


def test_build_context_holds_what_it_copies() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for keyword, rest in instructions():
        if keyword != "COPY" or "--from=" in rest:
            continue
        *sources, _ = shlex.split(rest)
        for source in sources:
            assert source.rstrip("/") in allowed, f"COPY {source} is excluded by .dockerignore"
            assert (ROOT / source).exists(), f"COPY {source}: no such path"


def stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions (FROM line included)."""
    out: dict[str, list[tuple[str, str]]] = {}
    current = None
    for keyword, rest in instructions():
        if keyword == "FROM":
            words = rest.split()
            current = words[-1] if len(words) >= 3 and words[-2].upper() == "AS" else "<final>"
            out[current] = []
        if current is not None:
            out[current].append((keyword, rest))
    return out


def test_production_defaults_are_the_cuda_flavour() -> None:
    """FLAVOR defaults to cuda, and that flavour is what the file always built: CUDA runtime
    base, uv's standalone CPython, instructlab-training[cuda]."""
    args = build_args()
    assert args["FLAVOR"] == "cuda"
    by_stage = stages()
    assert by_stage["<final>"][0] == ("FROM", "runtime-${FLAVOR}")
    assert by_stage["runtime-cuda"][0] == ("FROM", "${CUDA_RUNTIME_IMAGE} AS runtime-cuda")
    assert args["CUDA_RUNTIME_IMAGE"].startswith("nvidia/cuda:")
    build_runs = " ".join(rest for keyword, rest in by_stage["build"] if keyword == "RUN")
    assert "uv python install" in build_runs and "instructlab-training[cuda]" in build_runs


def test_cpu_flavour_installs_the_local_torch_wheel_and_no_cuda_extra() -> None:
    by_stage = stages()
    cpu_stages = ["deps-cpu", "build-cpu", "venv-cpu", "runtime-cpu"]
    assert set(cpu_stages) <= set(by_stage)
    runs = " ".join(rest for keyword, rest in by_stage["deps-cpu"] if keyword == "RUN")
    assert "source=wheels" in runs and "/wheels/torch-*.whl" in runs
    assert "--constraint /tmp/constraints.txt" in runs and "source=constraints.txt" in runs
    assert '"instructlab-training==${INSTRUCTLAB_TRAINING_VERSION}"' in runs
    assert "[cuda]" not in runs
    # The CPU stages take nothing from the CUDA or uv images or the CUDA build stage.
    cpu_text = repr([step for stage in cpu_stages for step in by_stage[stage]])
    assert "${CUDA_" not in cpu_text and "--from=uv" not in cpu_text and "--from=build " not in cpu_text
    # The project layer is apart from the dependencies' layer (a source change rebuilds only it).
    copies = [rest for keyword, rest in by_stage["runtime-cpu"] if keyword == "COPY"]
    assert copies == ["--from=venv-cpu /opt/sft-trainer /opt/sft-trainer", "--from=build-cpu /staging/ /"]


def test_no_syntax_directive() -> None:
    """A `# syntax=` line makes BuildKit pull a frontend image; the built-in one must do."""
    first_lines = DOCKERFILE.read_text().splitlines()[:5]
    assert not any(re.match(r"#\s*syntax\s*=", line, re.I) for line in first_lines)
