"""Data processing under stress: many real instructlab-training processing runs (the launcher's
watched child, sft_trainer.data_watchdog) with CPU burners alongside, some with a pool worker
made to hang.

    PYTHONPATH=. .venv/bin/python benchmarks/data_processing_stress.py [--runs 25] [--inject-every 5]
        [--burners 2] [--stall-timeout 15] [--samples 200] [--procs 2]

--inject-every 0 injects nothing: then any stalled attempt is a real hang (the issue saw about
1 run in 25) or a timeout shorter than a legitimate gap.

Prints, per run, its time and attempts, then: runs, hangs injected, stalled attempts killed and
retried, the longest gap without progress in a finished attempt (what the stall timeout must
stay above), and the total time. Asserts nothing; machine noise shows in the numbers.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "training"))

from data_stress import stress  # noqa: E402

from devtools.tiny_model import build_tiny_assets  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=25)
    parser.add_argument("--inject-every", type=int, default=5)
    parser.add_argument("--burners", type=int, default=2)
    parser.add_argument("--stall-timeout", type=float, default=15.0)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--procs", type=int, default=2, help="data_process_num_cpu_procs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="data-stress-") as tmp:
        work = Path(tmp)
        assets = build_tiny_assets(work / "assets", num_samples=args.samples)
        result = stress(
            assets.model_dir,
            assets.data_path,
            work,
            runs=args.runs,
            inject_every=args.inject_every,
            stall_timeout=args.stall_timeout,
            burners=args.burners,
            num_cpu_procs=args.procs,
            log=lambda line: print(line, flush=True),
        )
    clean = [run.seconds for run in result.runs if not run.injected]
    hung = [run.seconds for run in result.runs if run.injected]
    wrong = [run.number for run in result.runs if run.samples != args.samples]
    print()
    print(
        f"runs:                         {len(result.runs)} ({args.burners} CPU burners, "
        f"{args.procs} pool processes, stall timeout {args.stall_timeout:g}s)"
    )
    print(f"hangs injected:               {result.injected}")
    print(
        f"stalled attempts recovered:   {result.recovered} "
        f"({result.unexpected_stalls} in runs without an injected hang)"
    )
    print(f"runs with wrong output:       {len(wrong)} {wrong or ''}")
    if clean:
        print(f"run time, no hang:            median {statistics.median(clean):.1f}s, max {max(clean):.1f}s")
    if hung:
        print(f"run time, hang recovered:     median {statistics.median(hung):.1f}s, max {max(hung):.1f}s")
    print(f"longest gap without progress: {result.max_gap:.1f}s (in a finished attempt)")
    print(f"total:                        {result.seconds:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
