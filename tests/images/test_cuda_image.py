"""The trainer image's CUDA flavour, built for real (opt-in: SFT_TEST_CUDA_IMAGE=1; the reason is
images_harness.CUDA_OPT_IN_REASON): torch is the CUDA build the Dockerfile names, NCCL from the
nvidia wheel loads, the launcher imports and turns flash attention off in an image without
flash_attn, Triton's compile step works as the pod's user, and the tiny model trains to
completion in it on the CPU, set up exactly as test_trainer_run sets up the CPU image. No GPU
here: CUDA itself is not initialised."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import test_trainer_run
from images_harness import ROOT, docker
from packaging.utils import canonicalize_name

pytestmark = [pytest.mark.images, pytest.mark.timeout(3600)]

NON_ROOT = "65532:65532"
# An emptyDir /tmp as the pod has it: writable and, unlike docker's default tmpfs, exec (Triton
# loads the launchers it compiles from its cache under HOME=/tmp).
POD_TMP = ["--read-only", "--tmpfs", "/tmp:rw,exec,mode=1777"]


def dockerfile_arg(name: str) -> str:
    text = (ROOT / "trainer-image" / "Dockerfile").read_text()
    return re.search(rf"^ARG {name}=(\S+)$", text, re.M).group(1)


def cuda_pin(name: str) -> str:
    text = (ROOT / "trainer-image" / "constraints-cuda.txt").read_text()
    return re.search(rf"^{re.escape(name)}==(\S+)$", text, re.M).group(1)


def python(image: str, code: str, timeout: float = 600) -> str:
    return docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--user",
        NON_ROOT,
        *POD_TMP,
        "--entrypoint",
        "python",
        image,
        "-c",
        code,
        timeout=timeout,
    ).stdout


def test_cuda_image_runs_the_launcher_as_non_root_with_the_nvidia_runtime_env(cuda_trainer_image: str) -> None:
    cfg = json.loads(docker("image", "inspect", "--format", "{{json .Config}}", cuda_trainer_image).stdout)
    assert cfg["User"] == NON_ROOT
    assert cfg["Entrypoint"] == ["sft-trainer"] and not cfg.get("Cmd")
    env = dict(item.split("=", 1) for item in cfg["Env"])
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert env["LD_LIBRARY_PATH"].split(":")[0] == "/usr/local/nvidia/lib64"
    assert env["HOME"] == "/tmp" and env["PATH"].startswith("/opt/sft-trainer/bin:")
    size = int(docker("image", "inspect", "--format", "{{.Size}}", cuda_trainer_image).stdout)
    print(f"{cuda_trainer_image}: {size / 1e6:.0f} MB")


def test_torch_is_the_cuda_build_and_nccl_loads(cuda_trainer_image: str) -> None:
    out = python(
        cuda_trainer_image,
        "\n".join(
            [
                "import ctypes, glob, importlib.util, torch, nvidia.nccl",
                "print(torch.__version__, torch.version.cuda, torch.cuda.is_available())",
                "print('.'.join(map(str, torch.cuda.nccl.version())))",
                # The library itself, from the nvidia wheel, through its C API.
                "(lib,) = glob.glob(nvidia.nccl.__path__[0] + '/lib/libnccl.so.*')",
                "v = ctypes.c_int(); assert ctypes.CDLL(lib).ncclGetVersion(ctypes.byref(v)) == 0",
                "print(v.value)",
                "print(importlib.util.find_spec('pip') is None)",
            ]
        ),
    ).split()
    torch_version, torch_cuda, available, nccl, nccl_code, no_pip = out
    major = dockerfile_arg("TORCH_CUDA_MAJOR")
    assert torch_cuda.split(".")[0] == major, out
    assert torch_version == f"{dockerfile_arg('TORCH_VERSION')}+cu{torch_cuda.replace('.', '')}", out
    assert available == "False"  # no GPU here; the driver would come from the node
    expected = cuda_pin(f"nvidia-nccl-cu{major}")
    assert nccl == expected, out
    x, y, z = map(int, expected.split("."))
    assert int(nccl_code) == x * 10000 + y * 100 + z, out
    assert no_pip == "True", "pip left in the runtime image"


def test_every_installed_package_is_the_pinned_version(cuda_trainer_image: str) -> None:
    """What the image holds is constraints-cuda.txt, exactly: nothing unpinned got in."""
    out = python(
        cuda_trainer_image,
        "import importlib.metadata as m\nfor d in m.distributions(): print(d.metadata['Name'], d.version)",
    )
    installed = {canonicalize_name(name): version for name, version in (line.split() for line in out.splitlines())}
    assert installed.pop("sft-operator") == "0.1.0"
    pins = {}
    for line in (ROOT / "trainer-image" / "constraints-cuda.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    wheelhouse_only = {"einops", "ninja"}  # installed only with a wheelhouse
    assert installed == {name: v for name, v in pins.items() if name not in wheelhouse_only}


def test_launcher_imports_and_trains_without_flash_attn(cuda_trainer_image: str) -> None:
    out = python(
        cuda_trainer_image,
        "\n".join(
            [
                "import importlib.util",
                "import sft_trainer.launcher, instructlab.training.main_ds, liger_kernel.transformers",
                "from sft_trainer.launch_config import build_training_args, parse_config",
                "args = {'model_path': '/m', 'data_path': '/d.jsonl', 'ckpt_output_dir': '/c',",
                "        'max_seq_len': 64, 'max_batch_len': 128, 'num_epochs': 1,",
                "        'effective_batch_size': 4, 'save_samples': 0, 'learning_rate': 1e-4,",
                "        'warmup_steps': 0}",
                "training = build_training_args(parse_config({'trainingArgs': args}), cpu=False)",
                "print(importlib.util.find_spec('flash_attn') is None, training.disable_flash_attn)",
            ]
        ),
    )
    assert out.split()[-2:] == ["True", "True"], out
    assert (
        "--nproc-per-node"
        in docker(
            "run", "--rm", "--network", "none", *POD_TMP, "--entrypoint", "torchrun", cuda_trainer_image, "--help"
        ).stdout
    )


def test_triton_compiles_with_the_image_gcc_as_the_pod_user(cuda_trainer_image: str) -> None:
    """Triton builds a C launcher for each kernel signature at first use (liger's kernels with
    use_liger): its own build step, gcc and Python.h, on a read-only root."""
    out = python(
        cuda_trainer_image,
        "\n".join(
            [
                "import importlib.util, os, shutil, tempfile",
                "from triton.runtime.build import _build",
                "src_dir = tempfile.mkdtemp()",
                "src = os.path.join(src_dir, 'probe.c')",
                "open(src, 'w').write('#include <Python.h>\\n'",
                "    'static struct PyModuleDef m = {PyModuleDef_HEAD_INIT, \"probe\", NULL, -1, NULL};\\n'",
                "    'PyMODINIT_FUNC PyInit_probe(void) { return PyModule_Create(&m); }\\n')",
                "so = _build('probe', src, src_dir, [], [], [], [])",
                "spec = importlib.util.spec_from_file_location('probe', so)",
                "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)",
                "print(shutil.which('gcc'), module.__name__)",
            ]
        ),
    )
    assert out.split() == ["/usr/bin/gcc", "probe"], out


def test_tiny_model_trains_to_completion_in_the_cuda_image(
    cuda_trainer_image: str, tmp_path: Path, container_names: list[str]
) -> None:
    """SFT_DEVICE=cpu (the example job's device), everything else as the CPU image's run."""
    test_trainer_run.test_tiny_model_trains_to_completion_in_the_trainer_image(
        trainer_image=cuda_trainer_image, tmp_path=tmp_path, container_names=container_names
    )
