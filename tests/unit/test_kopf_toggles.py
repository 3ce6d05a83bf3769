"""The start-up gate kopf waits on (kopf_toggles): same answers as kopf's, without waking every
waiter on every change."""

from __future__ import annotations

import asyncio
import inspect

from kopf._cogs.aiokits import aiotoggles
from kopf._core.reactor import orchestration

from sft_operator import kopf_toggles


def test_it_replaces_the_class_kopf_1_45_builds_its_gate_from() -> None:
    source = inspect.getsource(orchestration)
    assert "operator_indexed=aiotoggles.ToggleSet(all)" in source  # what install() swaps
    for name in ("make_toggle", "drop_toggle", "drop_toggles", "wait_for", "is_on"):
        assert hasattr(kopf_toggles.KopfToggleSet, name), name
    original = aiotoggles.ToggleSet
    try:
        kopf_toggles.install()
        assert orchestration.aiotoggles.ToggleSet is kopf_toggles.QuietToggleSet
    finally:
        aiotoggles.ToggleSet = original


async def _gate(cls: type, objects: int) -> tuple[int, list[bool]]:
    """``objects`` workers wait for the gate (as kopf's object workers do) while their toggles are
    dropped one by one; returns how often the state was evaluated and when the waiters got out."""
    gate = cls(all)
    evaluations = 0
    is_on = gate.is_on

    def counted() -> bool:
        nonlocal evaluations
        evaluations += 1
        return is_on()

    gate.is_on = counted
    toggles = [await gate.make_toggle(name=f"object {i}") for i in range(objects)]
    released: list[bool] = []

    async def worker() -> None:
        await gate.wait_for(True)
        released.append(not toggles_left)

    toggles_left = list(toggles)
    waiters = [asyncio.create_task(worker()) for _ in range(objects)]
    await asyncio.sleep(0)
    for toggle in toggles:
        toggles_left.remove(toggle)
        await gate.drop_toggle(toggle)
        await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.gather(*waiters), timeout=30)
    return evaluations, released


def test_waiters_get_out_exactly_when_the_last_toggle_goes_with_linear_wakeups() -> None:
    evaluations, released = asyncio.run(_gate(kopf_toggles.QuietToggleSet, 300))
    assert released == [True] * 300  # nobody out early, nobody left behind
    assert evaluations < 10 * 300, evaluations
    kopfs, released = asyncio.run(_gate(kopf_toggles.KopfToggleSet, 300))
    assert released == [True] * 300
    assert kopfs > 300 * 300 / 2, kopfs  # what it replaces: every waiter re-checks on every drop


def test_a_toggle_turned_on_or_added_still_wakes_the_waiters() -> None:
    async def scenario() -> list[str]:
        gate = kopf_toggles.QuietToggleSet(all)
        seen: list[str] = []
        blocker = await gate.make_toggle(name="blocker")

        async def on() -> None:
            await gate.wait_for(True)
            seen.append("on")

        async def off() -> None:
            await gate.wait_for(False)
            seen.append("off")

        waiter = asyncio.create_task(on())
        await asyncio.sleep(0)
        await blocker.turn_to(True)  # a toggle's own change: kopf's notify
        await asyncio.wait_for(waiter, timeout=5)
        waiter = asyncio.create_task(off())
        await asyncio.sleep(0)
        await gate.make_toggle(False, name="late")  # on -> off by adding
        await asyncio.wait_for(waiter, timeout=5)
        return seen

    assert asyncio.run(scenario()) == ["on", "off"]
