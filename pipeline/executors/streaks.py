"""Failure streaks: which codec workers to retire, and which of their failed units to try again.

A unit that fails on a worker that goes on to finish others failed for a reason of its own: it
is reported. A worker that fails `limit` units in a row is suspect (a broken GPU that Ray did not
restart, a full disk on its node, ...): it is retired, and the units it failed go back to the
queue for the other workers, so one bad worker cannot fail most of a run's units in seconds while
the healthy ones take a minute each.
"""

from __future__ import annotations

from collections import defaultdict

RETIRE_AFTER = 3  # units failed in a row


class FailureStreaks:
    def __init__(self, limit: int = RETIRE_AFTER):
        self.limit = limit
        self._failed: dict = defaultdict(list)  # worker key -> [(unit attempt, error)] since its last success

    def succeeded(self, worker) -> list:
        """The worker finished a unit: the failures of its streak were the units' own."""
        return self._failed.pop(worker, [])

    def failed(self, worker, attempt, error) -> list | None:
        """Record a failure; the streak's failures when it reaches `limit` (retire the worker and
        try them elsewhere), else None."""
        streak = self._failed[worker]
        streak.append((attempt, error))
        if len(streak) < self.limit:
            return None
        return self._failed.pop(worker)

    def leftover(self) -> list:
        """Failures of streaks still open when the run ends: the units' own."""
        out = [item for streak in self._failed.values() for item in streak]
        self._failed.clear()
        return out
