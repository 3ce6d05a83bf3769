"""What checking a progress summary costs the operator: progress_by_job runs it in kopf's event
loop for every event of a progress ConfigMap (at most one per job every --min-interval seconds,
15 s by default, plus milestones). Prints milliseconds per summary for a full honest summary
(256 loss points, 512 checkpoints: the bounds), for the same without the check (pydantic's plain
JSON parse, what the operator did before), and for garbage: every value of such a summary wrong,
filled up to a ConfigMap's 1 MiB.

    PYTHONPATH=. .venv/bin/python benchmarks/progress_check.py [ROUNDS]
"""

from __future__ import annotations

import json
import sys
import time

from sft_core.progress import MAX_CHECKPOINTS, MAX_LOSS_HISTORY, TrainingProgress, parse_progress_summary

T = "2026-01-01T00:00:00Z"


def honest() -> str:
    return json.dumps(
        {
            "stage": "Training",
            "epoch": 3,
            "numEpochs": 10,
            "epochDisplay": "3/10",
            "samplesSeen": 123456,
            "totalSamples": 1000000,
            "percent": 12,
            "percentDisplay": "12%",
            "lastLoss": "0.4321",
            "throughput": "812.50",
            "etaSeconds": 1077,
            "latestCheckpoint": f"samples_{MAX_CHECKPOINTS * 100}",
            "resumable": True,
            "lastUpdateTime": T,
            "checkpoints": [
                {
                    "name": f"samples_{i * 100}",
                    "path": f"hf_format/samples_{i * 100}",
                    "samples": i * 100,
                    "epoch": 1 + i // 100,
                    "time": T,
                }
                for i in range(1, MAX_CHECKPOINTS + 1)
            ],
            "latestFullState": {
                "name": "epoch_2",
                "path": "full_state/epoch_2",
                "epoch": 3,
                "samples": 120000,
                "midEpoch": False,
                "time": T,
            },
            "lossHistory": [{"samples": i * 10, "loss": 1.0 / (i + 1), "lr": 1e-5} for i in range(MAX_LOSS_HISTORY)],
        }
    )


def garbage() -> str:
    """Every value of a full-size summary wrong (the most errors the bounds allow), and a list
    past its bound that fills the rest of a ConfigMap (1 MiB)."""
    points = [{"samples": str(i), "loss": float("nan"), "lr": "x"} for i in range(MAX_LOSS_HISTORY)]
    checkpoints = [
        {"name": "n" * 300, "path": 7, "samples": 2**70, "epoch": "1", "time": "yesterday"}
        for _ in range(MAX_CHECKPOINTS)
    ]
    return json.dumps(
        {
            "stage": "Training",
            "samplesSeen": 2**70,
            "lastUpdateTime": "yesterday",
            "lossHistory": points,
            "checkpoints": checkpoints,
            "latestFullState": {"name": "e", "path": "p", "epoch": -1, "time": T},
            "unknown": list(range(100000)),
        }
    )


def per_call_ms(call, raw: str, rounds: int) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        call(raw)
    return 1000 * (time.perf_counter() - started) / rounds


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    good, bad = honest(), garbage()
    checked = parse_progress_summary(good)
    assert checked.value is not None and not checked.dropped, checked.dropped
    print(
        f"honest summary, {len(good) / 1024:.0f} KiB: checked {per_call_ms(parse_progress_summary, good, rounds):.2f} ms,"
        f" plain parse {per_call_ms(TrainingProgress.model_validate_json, good, rounds):.2f} ms"
    )
    dropped = parse_progress_summary(bad).dropped
    print(
        f"garbage summary, {len(bad) / 1024:.0f} KiB: checked {per_call_ms(parse_progress_summary, bad, max(1, rounds // 10)):.1f} ms;"
        f" dropped {[(d.key, d.count) for d in dropped]}"
    )


if __name__ == "__main__":
    main()
