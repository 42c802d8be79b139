"""Log lines that can repeat thousands of times a second (a dead upstream, a flood of broken
requests) are rate limited: at most one line per key and interval, and the next line says how
many were held back, so the log stays readable and bounded while nothing goes unsaid."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

#: Distinct keys remembered; past it the oldest are forgotten (keys are targets, reasons...).
MAX_KEYS = 1024


class RateLimitedLog:
    """`log(key, message, *args)`: emitted when `key` was last emitted `interval` seconds ago or
    more, else counted and mentioned in the key's next line."""

    __slots__ = ("_clock", "_interval", "_last", "_level", "_logger", "_suppressed")

    def __init__(
        self,
        logger: logging.Logger,
        *,
        level: int = logging.WARNING,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._level = level
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, key: str, message: str, *args: object) -> bool:
        """Log or count one event; True when a line was written."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        if last is None and len(self._last) >= MAX_KEYS:
            oldest = next(iter(self._last))
            del self._last[oldest]
            self._suppressed.pop(oldest, None)
        self._last.pop(key, None)  # re-insert: the dict stays ordered oldest first
        self._last[key] = now
        held = self._suppressed.pop(key, 0)
        if held:
            message += " (%d more like it in the last %.0fs)"
            args = (*args, held, now - last if last is not None else 0.0)
        self._logger.log(self._level, message, *args)
        return True
