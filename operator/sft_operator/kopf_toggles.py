"""kopf's start-up gate without its quadratic wake-ups.

At start-up kopf holds every handler until every indexed object is indexed: one toggle per
object in one ToggleSet, and each object's worker waits on the set. kopf 1.45 wakes every waiter
on every toggle added or dropped, so N objects cost N x N wake-ups before the first handler runs:
an operator restart over 1000 jobs (several thousand pods, ConfigMaps and StatefulSets) was
still inside it after 10 minutes of CPU. A waiter only cares when the set's state flips, so this
set wakes them only then; the rest is kopf's (a toggle turned on or off still notifies itself).
kopf is pinned (constraints.txt); tests/unit/test_kopf_toggles.py checks the class it replaces.
"""

from __future__ import annotations

from collections.abc import Iterable

from kopf._cogs.aiokits import aiotoggles

KopfToggleSet = aiotoggles.ToggleSet


class QuietToggleSet(KopfToggleSet):
    """A ToggleSet that notifies its waiters only when is_on() changes."""

    async def make_toggle(self, __val: bool = False, *, name: str | None = None) -> aiotoggles.Toggle:
        toggle = aiotoggles.Toggle(__val, name=name, condition=self._condition)
        async with self._condition:
            before = self.is_on()
            self._toggles.add(toggle)
            if self.is_on() != before:
                self._condition.notify_all()
        return toggle

    async def drop_toggle(self, toggle: aiotoggles.Toggle) -> None:
        await self.drop_toggles([toggle])

    async def drop_toggles(self, toggles: Iterable[aiotoggles.Toggle]) -> None:
        async with self._condition:
            before = self.is_on()
            self._toggles.difference_update(toggles)
            if self.is_on() != before:
                self._condition.notify_all()


def install() -> None:
    """Make kopf build its start-up gate (orchestration's ``aiotoggles.ToggleSet(all)``) as a
    QuietToggleSet. Idempotent; before kopf.run."""
    aiotoggles.ToggleSet = QuietToggleSet  # type: ignore[misc]  # replacing kopf's class is the point
