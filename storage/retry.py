"""The one retry loop: transient failures retried with capped exponential backoff, until a
budget of failures in a row without progress is spent.

Every remote transfer in the project goes through `retry`: downloads (whole files and byte
ranges) and remote reads (shards streamed or read by ranges). An attempt that moves `position()`
(bytes on disk, the offset of a stream) past its best so far resets the budget, so a multi-day
3 TB transfer survives any number of routine drops while a server that never gets further still
fails within minutes. A caller may also give a time budget: it gives up only once both the
attempts and `budget_s` seconds without progress are spent (a training run rides out a storage
outage of minutes). Each caller says which errors are transient and what to raise when it gives
up (its own error type, naming the URL).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Seconds to wait before the n-th retry in a row: first_s x 2^(n-1), at most cap_s; with
    jitter, a uniform share of 50-100 % of that (readers that fail together retry apart)."""

    first_s: float = 1.0
    cap_s: float = 60.0
    jitter: bool = False

    def delay(self, failures: int) -> float:
        wait = min(self.cap_s, self.first_s * 2 ** (failures - 1))
        return wait * random.uniform(0.5, 1.0) if self.jitter else wait


def retry(
    attempt: Callable[[], T],
    *,
    transient: tuple[type[BaseException], ...],
    attempts: int,
    backoff: Backoff,
    give_up: Callable[[BaseException, int, int], BaseException],
    what: str = "",
    position: Callable[[], int] = lambda: 0,
    after_failure: Callable[[], None] = lambda: None,
    budget_s: float = 0.0,
    final: tuple[type[BaseException], ...] = (),
) -> T:
    """Call `attempt()` until it returns and return its value. An exception of a `transient`
    type is retried after `backoff`; any other, or one of a `final` type, propagates at once. After `attempts` transient
    failures in a row that did not move `position()` past its largest value so far, and at least
    `budget_s` seconds since it last moved, raise `give_up(last error, attempts made, best
    position)`. `after_failure()` runs after each transient failure (e.g. to drop a broken
    connection)."""
    best, stalled, made, since = position(), 0, 0, time.monotonic()
    while True:
        made += 1
        try:
            return attempt()
        except final:
            raise
        except transient as err:
            last = err
        after_failure()
        now = position()
        if now > best:  # progress: the budget is for failures in a row
            best, stalled, since = now, 0, time.monotonic()
        stalled += 1
        if stalled >= attempts and time.monotonic() - since >= budget_s:
            raise give_up(last, made, best) from last
        wait = backoff.delay(stalled)
        log.warning(
            "%s: %s: %s; retrying from byte %d in %.1f s (%s)",
            what,
            type(last).__name__,
            last,
            now,
            wait,
            _left(attempts - stalled, attempts, budget_s - (time.monotonic() - since)),
        )
        time.sleep(wait)


def _left(attempts_left: int, attempts: int, budget_left_s: float) -> str:
    """What is left before giving up: attempts, and once they are spent, the time budget."""
    if attempts_left > 0:
        return f"{attempts_left} of {attempts} attempts left without progress"
    return f"attempts spent; retrying for {max(0.0, budget_left_s):.0f} s more of the retry budget"
