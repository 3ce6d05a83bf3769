"""`sft-operator submit --dry-run` (flags and -f manifests) and the status/list rows: no cluster."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import yaml
from typer.testing import CliRunner

from sft_client.api.results import view_job
from sft_client.cli import app
from sft_client.cli.jobs import LIST_COLUMNS, list_row, parse_value, status_rows
from sft_core.progress import CheckpointInfo, Stage, TrainingProgress

runner = CliRunner()

FLAGS = [
    "submit",
    "--dry-run",
    "--name",
    "qwen",
    "--model-path",
    "Qwen/Qwen2.5-7B-Instruct",
    "--data-path",
    "pvc://datasets/train.jsonl",
    "--ckpt-output-dir",
    "runs/a",
    "--checkpoint-claim-size",
    "100Gi",
    "--num-epochs",
    "3",
    "--effective-batch-size",
    "16",
    "--learning-rate",
    "2e-5",
    "--max-seq-len",
    "2048",
    "--nnodes",
    "2",
    "--nproc-per-node",
    "8",
]


def test_submit_flags_dry_run_prints_the_validated_manifest() -> None:
    result = runner.invoke(
        app,
        FLAGS
        + [
            "--set",
            "keep_last_checkpoint_only=true",
            "--set",
            "warmup_steps=10",
            "--env",
            "HF_TOKEN=a=b",
            "--image",
            "trainer:2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout) == {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "SFTJob",
        "metadata": {"name": "qwen"},  # no -n: the kubeconfig context's namespace, at creation
        "spec": {
            "modelPath": "Qwen/Qwen2.5-7B-Instruct",
            "dataPath": "/mnt/pvc/datasets/train.jsonl",
            "numEpochs": 3,
            "effectiveBatchSize": 16,
            "learningRate": 2e-5,
            "maxSeqLen": 2048,
            "warmupSteps": 10,
            "extraArgs": {"keep_last_checkpoint_only": True},
            "nnodes": 2,
            "nprocPerNode": 8,
            "checkpoints": {"path": "runs/a", "claim": {"size": "100Gi"}},
            "pod": {
                "image": "trainer:2",
                "env": [{"name": "HF_TOKEN", "value": "a=b"}],
                "volumes": [
                    {"name": "pvc-datasets", "persistentVolumeClaim": {"claimName": "datasets", "readOnly": True}}
                ],
                "volumeMounts": [{"name": "pvc-datasets", "mountPath": "/mnt/pvc/datasets", "readOnly": True}],
            },
        },
    }


def test_submit_with_bad_flags_names_them_and_exits_2() -> None:
    result = runner.invoke(app, FLAGS + ["--set", "no_such_arg=1", "--effective-batch-size", "4"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "invalid parameters (nothing was created):",
        "  no_such_arg (spec.extraArgs.no_such_arg): unknown instructlab-training argument",
        "  effective_batch_size (spec.effectiveBatchSize): must be at least nnodes * nprocPerNode = 16 "
        "(one sample per GPU per step)",
    ]
    assert runner.invoke(app, FLAGS + ["--set", "oops"]).exit_code == 2


def test_submit_checkpoint_storage_is_training_hubs_uri_and_the_old_size_use_names_the_new_flag() -> None:
    flags = [*FLAGS[: FLAGS.index("--checkpoint-claim-size")], *FLAGS[FLAGS.index("--checkpoint-claim-size") + 2 :]]
    result = runner.invoke(app, [*flags, "--checkpoint-storage", "100Gi"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "invalid parameters (nothing was created):",
        "  checkpoint_storage: '100Gi' is a claim size, but checkpoint_storage is training_hub's remote "
        "checkpoint URI: give the size as checkpoint_claim_size='100Gi' (sft-operator submit --checkpoint-claim-size)",
        "  ckpt_output_dir (spec.checkpoints): 'runs/a' is a path on this machine, which the pods cannot see: "
        "write pvc://<claim>/<path> for an existing claim, or pass checkpoint_claim_size (e.g. '100Gi') for the "
        "operator to create one",
    ]
    result = runner.invoke(
        app,
        [
            *FLAGS,
            "--checkpoint-storage",
            "s3://bucket/run",
            "--s3-endpoint",
            "http://minio:9000",
            "--s3-credentials-secret",
            "minio",
        ],
    )
    assert result.exit_code == 0, result.output
    spec = yaml.safe_load(result.stdout)["spec"]
    assert (spec["export"], spec["remote"]) == (
        {"uri": "s3://bucket/run", "fullStates": True, "restore": True},
        {"s3": {"credentialsSecret": "minio", "endpoint": "http://minio:9000"}},
    )
    result = runner.invoke(app, [*FLAGS, "--checkpoint-storage", "gs://bucket/run"])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[1] == (
        "  checkpoint_storage: 'gs://bucket/run': the kubernetes backend mirrors checkpoints to s3:// (any "
        "S3-compatible store, s3_endpoint) only; leave checkpoint_storage unset or 'pvc' to keep them on the job's claim"
    )
    result = runner.invoke(app, [*FLAGS, "--checkpoint-storage", "pvc"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout)["spec"]["checkpoints"] == {"path": "runs/a", "claim": {"size": "100Gi"}}


def test_submit_manifest_is_validated_like_the_operator_does(tmp_path: Path) -> None:
    manifest = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "SFTJob",
        "metadata": {"name": "from-file"},
        "spec": {
            "modelPath": "/models/m",
            "dataPath": "/data/d.jsonl",
            "numEpochs": 1,
            "effectiveBatchSize": 1,
            "learningRate": 1e-5,
            "maxSeqLen": 64,
            "checkpoints": {"existingClaim": "c"},
        },
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    result = runner.invoke(app, ["submit", "-f", str(path), "--dry-run", "-n", "ml"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout) == {**manifest, "metadata": {"name": "from-file", "namespace": "ml"}}

    manifest["spec"]["extraArgs"] = {"max_batch_len": 10}
    path.write_text(yaml.safe_dump(manifest))
    result = runner.invoke(app, ["submit", "-f", str(path), "--dry-run"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"{path}: invalid SFTJob: spec.extraArgs.max_batch_len: set by the operator from spec.maxTokensPerGpu; "
        "use that field"
    )
    both = runner.invoke(app, ["submit", "-f", str(path), "--num-epochs", "2"])
    assert both.exit_code == 2 and "not both" in both.stderr


def test_set_values_parse_as_json_then_yaml() -> None:
    assert [parse_value(v) for v in ("2e-5", "true", "10", "abc", "{a: 1}", "[1, 2]", "null")] == [
        2e-5,
        True,
        10,
        "abc",
        {"a": 1},
        [1, 2],
        None,
    ]


def test_status_and_list_rows_show_progress_and_the_latest_checkpoint() -> None:
    progress = TrainingProgress(
        stage=Stage.TRAINING,
        epoch=2,
        num_epochs=3,
        samples_seen=150,
        total_samples=300,
        percent=50,
        last_loss="0.9123",
        throughput="12.50",
        eta_seconds=65,
        checkpoints=[
            CheckpointInfo(
                name="samples_100", path="hf_format/samples_100", samples=100, epoch=1, time="2026-11-27T10:00:00Z"
            )
        ],
    ).to_api()
    job = {
        "metadata": {"name": "qwen", "namespace": "ml", "creationTimestamp": "2026-11-27T10:00:00Z"},
        "spec": {"numEpochs": 3, "checkpoints": {"existingClaim": "ckpts"}},
        "status": {"phase": "Running", "nodes": "2/2", "progress": progress},
    }
    view = view_job(job)
    assert status_rows(view) == [
        ("Job", "ml/qwen"),
        ("Phase", "Running"),
        ("Nodes", "2/2"),
        ("Stage", "Training"),
        ("Epoch", "2/3"),
        ("Samples", "150/300"),
        ("Progress", "50%"),
        ("Loss", "0.9123"),
        ("Throughput", "12.5 samples/s"),
        ("ETA", "1m05s"),
    ]
    now = datetime(2026, 11, 27, 12, 30, tzinfo=UTC)
    assert LIST_COLUMNS == ("NAME", "PHASE", "NODES", "EPOCH", "PROGRESS", "LOSS", "ETA", "LATEST CHECKPOINT", "AGE")
    assert list_row(view, now) == ["qwen", "Running", "2/2", "2/3", "50%", "0.9123", "1m05s", "samples_100", "2h"]
    pending = view_job({"metadata": {"name": "new", "namespace": "ml"}, "spec": {}})
    assert list_row(pending, now) == ["new", "Pending", "", "", "", "", "", "", ""]


def test_list_has_kubectl_get_sfts_columns_plus_the_eta() -> None:
    from devtools.crd import PRINTER_COLUMNS

    printed = [column["name"].upper() for column in PRINTER_COLUMNS]
    assert [c for c in LIST_COLUMNS if c != "ETA"] == ["NAME", *printed]


def test_the_operator_cli_does_not_need_the_api_package() -> None:
    """cli.py imports this module to register the commands; `sft-operator run` (the operator image)
    must keep working even where the api package is not installed, so it is imported lazily."""
    import subprocess
    import sys

    code = "import sys, sft_client.cli; print(sorted(m for m in sys.modules if m.startswith('sft_client.api')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_submit_data_names_a_file_here_and_the_dry_run_shows_where_it_goes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("train.jsonl").write_bytes(b'{"messages": []}\n')
    flags = [*FLAGS[: FLAGS.index("--data-path")], "--data", "./train.jsonl", *FLAGS[FLAGS.index("--data-path") + 2 :]]
    result = runner.invoke(app, flags)
    assert result.exit_code == 0, result.output
    spec = yaml.safe_load(result.stdout)["spec"]
    assert spec["dataPath"] == "/mnt/pvc/qwen-upload/.sft-uploads/sha256-19fc5b26092a5733/train.jsonl"
    assert spec["pod"]["volumes"] == [
        {"name": "pvc-qwen-upload", "persistentVolumeClaim": {"claimName": "qwen-upload", "readOnly": True}}
    ]
    result = runner.invoke(
        app, [*flags[: flags.index("./train.jsonl")], "./missing.jsonl", *flags[flags.index("./train.jsonl") + 1 :]]
    )
    assert result.exit_code == 2
    assert result.stderr.splitlines()[1].startswith(
        "  data_path (spec.dataPath): './missing.jsonl': no such file on this"
    )
