"""The trainer image's Dockerfile keeps its promises: pinned bases and versions, every Python
package of the CUDA flavour pinned (constraints-cuda.txt, agreeing with the CPU tier's
constraints.txt), numeric non-root user, the launcher as PID 1 in exec form, a build context that
has what it copies. (hadolint runs on both Dockerfiles in test_dockerfiles.py; tests/images builds
the images.) No Docker daemon here: nothing is built."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shlex
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "trainer-image" / "Dockerfile"
DOCKERIGNORE = ROOT / "trainer-image" / "Dockerfile.dockerignore"
CUDA_CONSTRAINTS = ROOT / "trainer-image" / "constraints-cuda.txt"
# instructlab-training's cuda extra that the CUDA flavour installs only from a wheelhouse: source
# packages that compile for hours or download binaries from outside any package index.
WHEELHOUSE_ONLY = {"flash-attn", "mamba-ssm"}


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
    return dict(rest.split("=", 1) for keyword, rest in instructions() if keyword == "ARG" and "=" in rest)


def test_base_images_are_pinned() -> None:
    args = build_args()
    stages = {rest.split()[-1] for keyword, rest in instructions() if keyword == "FROM" and " AS " in rest.upper()}
    for keyword, rest in instructions():
        if keyword != "FROM":
            continue
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0])
        if image in stages:
            continue
        _, _, tag = image.partition(":")
        assert re.search(r"\d+\.\d+\.\d+", tag), f"unpinned base image {image}"


def test_versions_match_the_trainer_distribution() -> None:
    args = build_args()
    pyproject = (ROOT / "trainer-image" / "pyproject.toml").read_text()
    assert f'"torch=={args["TORCH_VERSION"]}"' in pyproject
    assert f'"instructlab-training=={args["INSTRUCTLAB_TRAINING_VERSION"]}"' in pyproject
    assert args["INSTRUCTLAB_TRAINING_VERSION"] == "0.16.2"
    for stage in ("deps-cuda", "deps-cpu"):
        runs = " ".join(rest for keyword, rest in stages()[stage] if keyword == "RUN")
        assert '"instructlab-training==${INSTRUCTLAB_TRAINING_VERSION}"' in runs, stage
        assert '"accelerate==${ACCELERATE_VERSION}"' in runs, stage
    assert "[cuda]" not in DOCKERFILE.read_text().replace("# ", "")


def test_numeric_non_root_user() -> None:
    (user,) = [rest for keyword, rest in final_stage() if keyword == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and gid.isdigit() and int(uid) > 0 and int(gid) > 0, user


def test_launcher_is_pid_1_in_exec_form() -> None:
    (entrypoint,) = [rest for keyword, rest in final_stage() if keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["sft-trainer"]
    assert not [rest for keyword, rest in final_stage() if keyword == "CMD"]


def bind_sources(stage: str) -> list[str]:
    return [
        m
        for keyword, rest in stages()[stage]
        if keyword == "RUN"
        for m in re.findall(r"--mount=type=bind,source=([^,\s]+)", rest)
    ]


def test_build_context_holds_what_it_copies() -> None:
    """The repository root as context (a production build), filtered by the trainer's own
    Dockerfile.dockerignore, holds every COPY source and the CUDA stages' bind mounts."""
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "Dockerfile.dockerignore should start by excluding everything"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    sources = [
        source
        for keyword, rest in instructions()
        if keyword == "COPY" and "--from=" not in rest
        for source in shlex.split(rest)[:-1]
    ]
    sources += bind_sources("deps-cuda") + bind_sources("build-cuda")
    assert "trainer-image/wheelhouse" in sources and "trainer-image/constraints-cuda.txt" in sources
    for source in sources:
        assert source.rstrip("/") in allowed, f"{source} is excluded by Dockerfile.dockerignore"
        assert (ROOT / source).exists(), f"{source}: no such path"


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


def test_production_defaults_are_the_cuda_flavour_from_a_python_base() -> None:
    """FLAVOR defaults to cuda, built on a plain Python 3.11 image (no CUDA or uv image, no
    CPython from outside a package index), with a C compiler in the runtime for Triton and the
    env the NVIDIA container runtime needs to inject the driver."""
    args = build_args()
    assert args["FLAVOR"] == "cuda"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", args["CUDA_PYTHON_IMAGE"])
    by_stage = stages()
    assert by_stage["<final>"][0] == ("FROM", "runtime-${FLAVOR}")
    assert by_stage["base-cuda"][0] == ("FROM", "${CUDA_PYTHON_IMAGE} AS base-cuda")
    assert by_stage["runtime-cuda"][0] == ("FROM", "base-cuda AS runtime-cuda")
    external = {rest.split()[0] for keyword, rest in instructions() if keyword == "FROM"} - set(by_stage)
    assert external - {"runtime-${FLAVOR}"} == {"${CUDA_PYTHON_IMAGE}", "${CPU_PYTHON_IMAGE}"}, external
    text = DOCKERFILE.read_text()
    assert "uv " not in text.replace("# ", "\n") and "--from=uv" not in text and "curl" not in text
    base_runs = " ".join(rest for keyword, rest in by_stage["base-cuda"] if keyword == "RUN")
    assert re.search(r"apt-get install -y --no-install-recommends gcc libc6-dev\b", base_runs)
    assert "libpython3-dev" in base_runs  # Python.h, where the base lacks it (Debian's Python)
    env = " ".join(rest for keyword, rest in by_stage["runtime-cuda"] if keyword == "ENV")
    assert "NVIDIA_VISIBLE_DEVICES=all" in env and "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in env
    copies = [rest for keyword, rest in by_stage["runtime-cuda"] if keyword == "COPY"]
    assert copies == ["--from=venv-cuda /opt/sft-trainer /opt/sft-trainer", "--from=build-cuda /staging/ /"]


def pins(path: Path) -> dict[str, str]:
    """name -> version of a constraints file, every line `name==version`."""
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==" and not req.extras and not req.marker, line
            out[canonicalize_name(req.name)] = spec.version
    return out


def cuda_install() -> tuple[str, list[str]]:
    """deps-cuda's pip install: (its options, the requirements it names, build args expanded)."""
    runs = " ".join(rest for keyword, rest in stages()["deps-cuda"] if keyword == "RUN")
    (install,) = re.findall(r"pip install (--only-binary :all: .*?) &&", runs)
    words = shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: build_args().get(m.group(1), m.group(0)), install))
    options, named, i = [], [], 0
    while i < len(words):
        if words[i] in ("--only-binary", "--report", "--constraint"):
            options += words[i : i + 2]
            i += 2
        else:
            (options if words[i].startswith(("-", "$")) else named).append(words[i])
            i += 1
    return " ".join(options), named


def test_cuda_flavour_installs_wheels_only_every_one_pinned() -> None:
    runs = " ".join(rest for keyword, rest in stages()["deps-cuda"] if keyword == "RUN")
    assert "source=trainer-image/constraints-cuda.txt,target=/tmp/constraints.txt" in runs
    options, named = cuda_install()
    assert options == "--only-binary :all: --report /tmp/install-report.json --constraint /tmp/constraints.txt $@"
    cuda_pins = pins(CUDA_CONSTRAINTS)
    args = build_args()
    assert named[:3] == [
        f"torch=={args['TORCH_VERSION']}",
        f"instructlab-training=={args['INSTRUCTLAB_TRAINING_VERSION']}",
        f"accelerate=={args['ACCELERATE_VERSION']}",
    ], named
    for word in named:
        name, _, version = word.partition("==")
        assert canonicalize_name(name) in cuda_pins, f"{name} is not pinned in constraints-cuda.txt"
        assert version in ("", cuda_pins[canonicalize_name(name)]), word
    # The index's CUDA torch, not a CPU one: its CUDA libraries of the expected major are pinned.
    major = args["TORCH_CUDA_MAJOR"]
    assert {f"nvidia-nccl-cu{major}", f"nvidia-cudnn-cu{major}", "triton"} <= set(cuda_pins)
    assert not any("+" in version for version in cuda_pins.values()), "a local version (+cpu?)"


def test_cuda_pins_are_the_cpu_tiers_where_both_have_a_package() -> None:
    cpu_pins, cuda_pins = pins(ROOT / "constraints.txt"), pins(CUDA_CONSTRAINTS)
    shared = set(cpu_pins) & set(cuda_pins)
    assert {
        "torch",
        "instructlab-training",
        "transformers",
        "accelerate",
        "datasets",
        "peft",
        "trl",
        "pydantic",
        "numpy",
    } <= shared
    assert {name: cuda_pins[name] for name in shared if cuda_pins[name] != cpu_pins[name]} == {}


def test_the_cuda_extra_is_installed_or_left_to_the_wheelhouse() -> None:
    """Every package of instructlab-training's cuda extra is installed by deps-cuda, or is one of
    the compiled extras taken only from a wheelhouse (flash-attn, mamba-ssm)."""
    extra = {
        canonicalize_name(Requirement(r).name)
        for r in importlib.metadata.requires("instructlab-training")
        if Requirement(r).marker and Requirement(r).marker.evaluate({"extra": "cuda"})
    }
    _, named = cuda_install()
    installed = {canonicalize_name(word.split("==")[0]) for word in named}
    assert extra - installed == WHEELHOUSE_ONLY, extra - installed
    assert not installed & WHEELHOUSE_ONLY


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
