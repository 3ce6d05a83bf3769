"""`sft-operator submit --algorithm osft --dry-run`: an OSFT job from flags, checked locally."""

from __future__ import annotations

import yaml
from typer.testing import CliRunner

from sft_client.cli import app

runner = CliRunner()

FLAGS = [
    "submit",
    "--dry-run",
    "--name",
    "qwen-osft",
    "--algorithm",
    "osft",
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
    "--max-tokens-per-gpu",
    "8192",
    "--nnodes",
    "2",
]


def test_submit_osft_dry_run_prints_the_validated_manifest() -> None:
    result = runner.invoke(
        app, FLAGS + ["--unfreeze-rank-ratio", "0.3", "--set", "target_patterns=[q_proj, v_proj]", "--set", "seed=7"]
    )
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout) == {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "SFTJob",
        "metadata": {"name": "qwen-osft"},
        "spec": {
            "algorithm": "osft",
            "modelPath": "Qwen/Qwen2.5-7B-Instruct",
            "dataPath": "/mnt/pvc/datasets/train.jsonl",
            "numEpochs": 3,
            "effectiveBatchSize": 16,
            "learningRate": 2e-5,
            "maxSeqLen": 2048,
            "maxTokensPerGpu": 8192,
            "unfreezeRankRatio": 0.3,
            "targetPatterns": ["q_proj", "v_proj"],
            "seed": 7,
            "nnodes": 2,
            "checkpoints": {"path": "runs/a", "claim": {"size": "100Gi"}},
            "pod": {
                "volumes": [
                    {"name": "pvc-datasets", "persistentVolumeClaim": {"claimName": "datasets", "readOnly": True}}
                ],
                "volumeMounts": [{"name": "pvc-datasets", "mountPath": "/mnt/pvc/datasets", "readOnly": True}],
            },
        },
    }


def test_submit_osft_without_its_ratio_or_with_one_above_1_names_it_and_exits_2() -> None:
    missing = runner.invoke(app, FLAGS)
    assert missing.exit_code == 2
    assert "unfreeze_rank_ratio (spec.unfreezeRankRatio): required when spec.algorithm is osft" in missing.output
    above = runner.invoke(app, FLAGS + ["--unfreeze-rank-ratio", "1.5"])
    assert above.exit_code == 2
    assert "unfreeze_rank_ratio (spec.unfreezeRankRatio): Input should be less than or equal to 1" in above.output


def test_an_unknown_algorithm_is_refused() -> None:
    result = runner.invoke(app, FLAGS + ["--algorithm", "dpo"])
    assert result.exit_code == 2 and "--algorithm: 'dpo': sft or osft" in result.output
