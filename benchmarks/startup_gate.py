"""kopf's start-up gate on its own: N object workers wait until N toggles are dropped one by one
(what an operator restart over N indexed objects does before its first handler), with kopf's
ToggleSet and with sft_operator.kopf_toggles.QuietToggleSet. Prints seconds and predicate checks.

    PYTHONPATH=. .venv/bin/python benchmarks/startup_gate.py [N ...]
"""

from __future__ import annotations

import asyncio
import sys
import time

from sft_operator.kopf_toggles import KopfToggleSet, QuietToggleSet


async def gate_run(cls: type, objects: int) -> tuple[float, int]:
    gate = cls(all)
    checks = 0
    is_on = gate.is_on

    def counted() -> bool:
        nonlocal checks
        checks += 1
        return is_on()

    gate.is_on = counted
    toggles = [await gate.make_toggle(name=str(i)) for i in range(objects)]
    waiters = [asyncio.create_task(gate.wait_for(True)) for _ in range(objects)]
    await asyncio.sleep(0)
    started = time.perf_counter()
    for toggle in toggles:
        await gate.drop_toggle(toggle)
        await asyncio.sleep(0)
    await asyncio.gather(*waiters)
    return time.perf_counter() - started, checks


def main() -> int:
    sizes = [int(a) for a in sys.argv[1:]] or [500, 1000, 2000, 4000]
    print(f"{'objects':>8}  {'kopf s':>8}  {'kopf checks':>12}  {'quiet s':>8}  {'quiet checks':>12}")
    for n in sizes:
        kopf_s, kopf_checks = asyncio.run(gate_run(KopfToggleSet, n))
        quiet_s, quiet_checks = asyncio.run(gate_run(QuietToggleSet, n))
        print(f"{n:>8}  {kopf_s:>8.2f}  {kopf_checks:>12}  {quiet_s:>8.3f}  {quiet_checks:>12}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
