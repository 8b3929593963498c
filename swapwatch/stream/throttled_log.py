"""Log lines for things that can happen thousands of times a minute (drops, failed deliveries): counted per
reason and logged at most once per interval per reason, with how many happened since the last line.

The first occurrence of a reason is logged at once (so an operator sees it start), later ones are folded
into the next line that is due; `flush()` writes what is still pending (call it periodically and at
close). Not thread-safe: use one instance from one thread (the event loop).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class ThrottledLog:
    """Counts per reason, one log line per reason per `interval_s`:
    "<prefix>: <noun> (<reason>): <n> in the last <s> s, <total> in all; <last detail>"."""

    def __init__(
        self,
        logger: logging.Logger,
        prefix: str,
        noun: str,
        *,
        level: int = logging.WARNING,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.prefix = prefix
        self.noun = noun
        self.level = level
        self.interval_s = interval_s
        self._clock = clock
        self.totals: dict[str, int] = {}
        self._pending: dict[str, int] = {}
        self._detail: dict[str, str] = {}
        self._last: dict[str, float] = {}

    def note(self, reason: str, n: int = 1, detail: str = "") -> None:
        """Count `n` occurrences of `reason`; logs now if this reason's last line is `interval_s` old."""
        if n <= 0:
            return
        self.totals[reason] = self.totals.get(reason, 0) + n
        self._pending[reason] = self._pending.get(reason, 0) + n
        if detail:
            self._detail[reason] = detail
        last = self._last.get(reason)
        if last is None or self._clock() - last >= self.interval_s:
            self._emit(reason)

    def flush(self, *, force: bool = False) -> None:
        """Log the pending counts whose interval has passed (all of them with `force`)."""
        now = self._clock()
        for reason in [r for r, n in self._pending.items() if n]:
            if force or now - self._last.get(reason, -self.interval_s) >= self.interval_s:
                self._emit(reason)

    def _emit(self, reason: str) -> None:
        n = self._pending.pop(reason, 0)
        if not n:
            return
        now = self._clock()
        last = self._last.get(reason)
        since = f" in the last {now - last:.0f} s" if last is not None else ""
        detail = self._detail.pop(reason, "")
        self._last[reason] = now
        self.logger.log(
            self.level, "%s: %s (%s): %d%s, %d in all%s", self.prefix, self.noun, reason, n, since,
            self.totals[reason], f"; {detail}" if detail else "",
        )  # fmt: skip
