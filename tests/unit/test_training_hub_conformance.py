"""training-hub 0.11.2 conformance: ``sft()`` and ``SFTAlgorithm.train`` take its parameters in its
order (then our cluster settings, keyword-only); ``checkpoint_storage`` and ``enable_jit_checkpoint``
mean what they mean there; importing ``sft_client.api`` registers the backend "kubernetes".

The reference is tests/unit/training_hub_signatures.json, written from the wheel by
devtools/training_hub_reference.py with ``ast`` (nothing of training_hub is imported or vendored).
Committed, so that the comparison runs offline, everywhere, in milliseconds. The file cannot drift
unnoticed: test_the_reference_is_what_the_wheel_says reads the wheel again (pip download --no-deps,
150 kB, cached in ~/.cache/sft-operator/wheels) and is skipped only when no index can be reached.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import subprocess
import sys
import textwrap
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from devtools import training_hub_reference as reference
from sft_client.api import KubernetesSFTBackend, SFTAlgorithm, SFTParameterError, sft
from sft_client.api.mapping import TRAINING_HUB_SFT_PARAMS, ClusterOptions

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = json.loads(reference.REFERENCE.read_text())

BASE: dict[str, Any] = dict(
    model_path="Qwen/Qwen2.5-7B-Instruct",
    data_path="pvc://datasets/train.jsonl",
    ckpt_output_dir="pvc://ckpts/run1",
    num_epochs=1,
    effective_batch_size=8,
    learning_rate=1e-5,
    max_seq_len=64,
)


def described(function: Any) -> list[dict[str, Any]]:
    """A signature as the reference spells it (a default as its source text, repr here)."""
    return [
        {
            "name": name,
            "kind": param.kind.name,
            "default": None if param.default is inspect.Parameter.empty else repr(param.default),
        }
        for name, param in inspect.signature(function).parameters.items()
    ]


def built(kubernetes: KubernetesSFTBackend | None = None, /, **params: Any) -> dict[str, Any]:
    """The manifest for BASE and ``params``, named "job" (not a random name) so that two compare."""
    return (kubernetes or KubernetesSFTBackend(name="job")).build({**BASE, **params})[0]


def build_problems(backend: KubernetesSFTBackend | None = None, **params: Any) -> list[tuple[str, str | None, str]]:
    with pytest.raises(SFTParameterError) as raised:
        (backend or KubernetesSFTBackend()).build({**BASE, **params})
    return [(p.param, p.spec_path, p.message) for p in raised.value.parameters]


# --- signatures -------------------------------------------------------------------------------


def test_sft_takes_training_hubs_parameters_in_its_order_then_the_cluster_settings_keyword_only() -> None:
    theirs = REFERENCE["signatures"]["sft"]
    ours = described(sft)
    assert theirs[-1] == {"name": "kwargs", "kind": "VAR_KEYWORD", "default": None}
    assert ours[: len(theirs) - 1] == theirs[:-1]  # names, order, kinds and defaults
    assert ours[-1] == theirs[-1]
    cluster = ours[len(theirs) - 1 : -1]
    assert [(p["name"], p["kind"], p["default"]) for p in cluster] == [
        (f.name, "KEYWORD_ONLY", repr(f.default)) for f in fields(ClusterOptions)
    ]


def test_train_takes_training_hubs_parameters_exactly() -> None:
    assert described(SFTAlgorithm.train) == REFERENCE["signatures"]["SFTAlgorithm.train"]


def test_the_parameter_list_the_mapping_uses_is_training_hubs() -> None:
    assert list(TRAINING_HUB_SFT_PARAMS) == [p["name"] for p in REFERENCE["signatures"]["sft"][:-1]]


def test_the_reference_is_what_the_wheel_says() -> None:
    try:
        wheel = reference.download_wheel()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        pytest.skip(f"{reference.WHEEL_NAME} not cached and pip could not fetch it: {exc}")
    assert reference.reference_from_wheel(wheel) == REFERENCE
    assert reference.dump(REFERENCE) == reference.REFERENCE.read_text()  # the file is the script's output


def test_the_reference_reader_reads_kinds_and_defaults() -> None:
    source = textwrap.dedent(
        """
        class SFTAlgorithm:
            def train(self, a, /, b=1, *rest, c, d="x", **kwargs): ...
        def sft(a, b: int = None, *, c=None): ...
        """
    )
    assert reference.signatures_from_source(source) == {
        "sft": [
            {"name": "a", "kind": "POSITIONAL_OR_KEYWORD", "default": None},
            {"name": "b", "kind": "POSITIONAL_OR_KEYWORD", "default": "None"},
            {"name": "c", "kind": "KEYWORD_ONLY", "default": "None"},
        ],
        "SFTAlgorithm.train": [
            {"name": "self", "kind": "POSITIONAL_ONLY", "default": None},
            {"name": "a", "kind": "POSITIONAL_ONLY", "default": None},
            {"name": "b", "kind": "POSITIONAL_OR_KEYWORD", "default": "1"},
            {"name": "rest", "kind": "VAR_POSITIONAL", "default": None},
            {"name": "c", "kind": "KEYWORD_ONLY", "default": None},
            {"name": "d", "kind": "KEYWORD_ONLY", "default": "'x'"},
            {"name": "kwargs", "kind": "VAR_KEYWORD", "default": None},
        ],
    }
    with pytest.raises(ValueError, match=r"^training_hub/algorithms/sft.py defines no SFTAlgorithm.train$"):
        reference.signatures_from_source("def sft(): ...")


# --- checkpoint_storage: training_hub's remote URI ---------------------------------------------


def test_an_s3_checkpoint_storage_is_the_export_with_full_states_and_restore() -> None:
    # training_hub mirrors full checkpoints to the URI and restores from it when the local
    # directory is empty: the transfer sidecar's export with fullStates and restore.
    manifest = built(checkpoint_storage="s3://bucket/prefix")
    assert manifest["spec"]["export"] == {"uri": "s3://bucket/prefix", "fullStates": True, "restore": True}
    assert {k: v for k, v in manifest["spec"].items() if k != "export"} == built()["spec"]
    # With an endpoint and credentials for an S3-compatible store: spec.remote.s3.
    manifest = built(
        KubernetesSFTBackend(name="job", s3_endpoint="http://minio.storage:9000", s3_credentials_secret="minio-creds"),
        checkpoint_storage="s3://bucket/prefix",
    )
    assert manifest["spec"]["remote"] == {
        "s3": {"credentialsSecret": "minio-creds", "endpoint": "http://minio.storage:9000"}
    }
    # The same target named twice is fine; two targets are not.
    assert (
        built(
            KubernetesSFTBackend(name="job", export_uri="s3://bucket/prefix"), checkpoint_storage="s3://bucket/prefix"
        )["spec"]["export"]["restore"]
        is True
    )
    assert build_problems(KubernetesSFTBackend(export_uri="s3://other"), checkpoint_storage="s3://bucket/prefix") == [
        (
            "export_uri",
            "spec.export.uri",
            "'s3://other': checkpoint_storage='s3://bucket/prefix' is the export target already; set one of them",
        )
    ]
    assert build_problems(KubernetesSFTBackend(export_full_states=False), checkpoint_storage="s3://bucket/prefix") == [
        (
            "export_full_states",
            "spec.export.fullStates",
            "False: checkpoint_storage restores from the exported full states, so they are uploaded; give export_uri "
            "instead to export the hf_format checkpoints only",
        )
    ]
    # A bad bucket: the operator's own rule, under training_hub's parameter name.
    assert build_problems(checkpoint_storage="s3://Bucket_1/x") == [
        (
            "checkpoint_storage",
            "spec.export.uri",
            "String should match pattern '^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$'",
        )
    ]


def test_a_remote_checkpoint_storage_this_backend_cannot_write_is_refused_not_ignored() -> None:
    assert build_problems(checkpoint_storage="gs://bucket/prefix") == [
        (
            "checkpoint_storage",
            None,
            "'gs://bucket/prefix': the kubernetes backend mirrors checkpoints to s3:// (any S3-compatible store, "
            "s3_endpoint) only; leave checkpoint_storage unset or 'pvc' to keep them on the job's claim",
        )
    ]


def test_the_old_claim_size_use_names_the_new_parameter() -> None:
    assert build_problems(checkpoint_storage="500Gi") == [
        (
            "checkpoint_storage",
            None,
            "'500Gi' is a claim size, but checkpoint_storage is training_hub's remote checkpoint URI: give the "
            "size as checkpoint_claim_size='500Gi' (sft-operator submit --checkpoint-claim-size)",
        )
    ]
    assert build_problems(checkpoint_storage=10**12)[0][2].startswith("1000000000000 is a claim size, but")
    # The class form's old cluster setting: refused when the backend is made.
    with pytest.raises(SFTParameterError) as raised:
        KubernetesSFTBackend(namespace="ml", checkpoint_storage="1Ti")
    assert str(raised.value) == (
        "invalid sft() parameters: checkpoint_storage: '1Ti' is a claim size, but checkpoint_storage is "
        "training_hub's remote checkpoint URI: give the size as checkpoint_claim_size='1Ti' "
        "(sft-operator submit --checkpoint-claim-size)"
    )
    with pytest.raises(SFTParameterError) as raised:
        KubernetesSFTBackend(checkpoint_storage="pvc")
    assert str(raised.value) == (
        "invalid sft() parameters: checkpoint_storage: 'pvc': training_hub's remote checkpoint URI is a training "
        "parameter: give it to train() or sft()"
    )
    # sft() itself: refused before the cluster is contacted (no api_client, no kubeconfig needed).
    with pytest.raises(SFTParameterError) as raised:
        sft(**BASE, checkpoint_storage="500Gi", kubeconfig="/nonexistent")
    assert raised.value.params == ["checkpoint_storage"]


def test_other_checkpoint_storage_values_are_refused_as_training_hub_refuses_them() -> None:
    assert build_problems(checkpoint_storage="/mnt/ckpts") == [
        ("checkpoint_storage", None, "'/mnt/ckpts': must be None, 'pvc' or a remote URI such as 's3://bucket/prefix'")
    ]


def test_pvc_or_unset_checkpoint_storage_is_the_claim_and_the_claim_size_has_its_own_parameter() -> None:
    plain = built()
    for value in ("pvc", "", None):
        assert built(checkpoint_storage=value) == plain
    manifest = built(KubernetesSFTBackend(checkpoint_claim_size="500Gi"), ckpt_output_dir="./runs/a")
    assert manifest["spec"]["checkpoints"] == {"path": "runs/a", "claim": {"size": "500Gi"}}
    assert build_problems(KubernetesSFTBackend(checkpoint_claim_size="lots"), ckpt_output_dir="./runs/a") == [
        (
            "checkpoint_claim_size",
            "spec.checkpoints.claim.size",
            "String should match pattern '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
        )
    ]


# --- enable_jit_checkpoint: always on here ------------------------------------------------------


def test_enable_jit_checkpoint_is_accepted_and_false_warns_that_the_sigterm_save_stays_on() -> None:
    plain = built()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert built(enable_jit_checkpoint=True) == plain
    with pytest.warns(UserWarning) as warned:
        manifest = built(enable_jit_checkpoint=False)
    assert [str(w.message) for w in warned] == [
        "enable_jit_checkpoint=False: on the cluster a pod that is stopped (preemption, suspend, node drain) "
        "always saves a checkpoint first, so that nothing is lost; this run does too"
    ]
    assert manifest == plain
    assert build_problems(enable_jit_checkpoint="yes") == [
        ("enable_jit_checkpoint", None, "'yes': must be True, False or None")
    ]


def test_backend_kubernetes_is_accepted_by_our_sft_too() -> None:
    assert built(backend="kubernetes") == built(backend="instructlab-training") == built()


# --- training_hub's backend registry ------------------------------------------------------------


def test_without_training_hub_importing_the_api_registers_nothing_and_imports_nothing_heavy() -> None:
    if importlib.util.find_spec("training_hub") is not None:
        pytest.skip("training_hub is installed in this environment")
    script = (
        "import sys, sft_client.api as api; "
        "print(api.register_with_training_hub(), 'training_hub' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["False", "False", "False"]


@pytest.fixture(scope="module")
def training_hub_path() -> Path:
    """training_hub and the pure-Python packages its import needs, in a cache directory
    (reference.install_for_import), never in the environment."""
    for needed in ("torch", "instructlab.training"):
        if importlib.util.find_spec(needed.split(".")[0]) is None:
            pytest.skip(f"training_hub's import needs {needed} (the trainer extra)")
    try:
        return reference.install_for_import()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        pytest.skip(f"could not install training_hub for the import test: {exc}")


def run_with_training_hub(path: Path, script: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), *sys.path])}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_with_training_hub_its_sft_routes_backend_kubernetes_to_ours(training_hub_path: Path) -> None:
    found = run_with_training_hub(
        training_hub_path,
        """
        import json
        import sft_client.api as api
        import training_hub
        from training_hub import AlgorithmRegistry, sft

        registered = AlgorithmRegistry.get_backend("sft", "kubernetes") is api.KubernetesSFTBackend
        # training_hub's own sft(): its SFTAlgorithm.train hands the parameters to our backend,
        # whose checks run before any cluster is contacted.
        try:
            sft(model_path="Qwen/Qwen2.5-7B-Instruct", data_path="pvc://datasets/train.jsonl",
                ckpt_output_dir="pvc://ckpts/run1", backend="kubernetes", num_epochs=1,
                effective_batch_size=8, learning_rate=1e-5, max_seq_len=64, node_rank=1, namespace="ml")
            refused = None
        except api.SFTParameterError as exc:
            refused = str(exc)

        class Built(api.KubernetesSFTBackend):  # what our backend makes of training_hub's parameters
            def execute_training(self, algorithm_params):
                return self.build(algorithm_params)[0]

        manifest = training_hub.SFTAlgorithm(backend=Built()).train(
            model_path="Qwen/Qwen2.5-7B-Instruct", data_path="pvc://datasets/train.jsonl",
            ckpt_output_dir="pvc://ckpts/run1", num_epochs=1, effective_batch_size=8, learning_rate=1e-5,
            max_seq_len=64, enable_jit_checkpoint=True, checkpoint_storage="pvc", name="via-hub", namespace="ml")
        print(json.dumps({"registered": registered, "refused": refused, "manifest": manifest,
                          "file": training_hub.__file__}))
    """,
    )
    assert found["file"].startswith(str(training_hub_path))
    assert found["registered"] is True
    assert found["refused"] == (
        "invalid sft() parameters: node_rank: set by the operator: each pod's rank comes from its ordinal; "
        "the operator starts one pod per node"
    )
    ours = built(KubernetesSFTBackend(name="via-hub", namespace="ml"))
    # training_hub turns enable_jit_checkpoint=True into instructlab-training's on_demand_checkpointing,
    # which the launcher keeps on anyway.
    ours["spec"]["extraArgs"] = {"on_demand_checkpointing": True}
    assert found["manifest"] == ours


def test_through_training_hub_a_local_file_is_planned_for_upload_and_remote_settings_arrive(
    training_hub_path: Path, tmp_path: Path
) -> None:
    (tmp_path / "train.jsonl").write_bytes(b'{"messages": []}\n')
    found = run_with_training_hub(
        training_hub_path,
        f"""
        import json, os
        os.chdir({str(tmp_path)!r})
        import sft_client.api as api
        import training_hub

        class Built(api.KubernetesSFTBackend):  # what our backend prepares, short of the cluster
            def execute_training(self, algorithm_params):
                prepared = self.prepare(algorithm_params)
                return {{"spec": prepared.manifest["spec"], "upload": prepared.upload.data_url}}

        print(json.dumps(training_hub.SFTAlgorithm(backend=Built(show_progress=False)).train(
            model_path="hf://Qwen/Qwen2.5-7B-Instruct@main", data_path="./train.jsonl",
            ckpt_output_dir="pvc://ckpts/run1", num_epochs=1, effective_batch_size=8, learning_rate=1e-5,
            max_seq_len=64, name="via-hub", namespace="ml", hf_token_secret="hf-token",
            export_uri="s3://models/run1", s3_endpoint="http://minio.storage:9000")))
    """,
    )
    digest = "19fc5b26092a5733"  # the first 16 hex digits of the sha256 of the file's 17 bytes
    assert found["upload"] == f"pvc://ckpts/.sft-uploads/sha256-{digest}/train.jsonl"
    spec = found["spec"]
    assert (spec["modelPath"], spec["dataPath"]) == (
        "hf://Qwen/Qwen2.5-7B-Instruct@main",
        f"/checkpoints/.sft-uploads/sha256-{digest}/train.jsonl",
    )
    assert (spec["remote"], spec["export"]) == (
        {"huggingFace": {"tokenSecret": "hf-token"}, "s3": {"endpoint": "http://minio.storage:9000"}},
        {"uri": "s3://models/run1"},
    )
