"""Progress on long work: a bar on a terminal, a log line every 10 % elsewhere.

A build of a large catalog runs for minutes; in a terminal the shopkeeper sees a tqdm bar,
in a CI log or a service's journal a few INFO lines instead of thousands of carriage
returns.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from tqdm.auto import tqdm

logger = logging.getLogger("retrieval.progress")


class LogProgress:
    """The subset of tqdm's interface the engine uses, reporting through logging."""

    def __init__(self, total: int, desc: str, unit: str, step: float = 0.1) -> None:
        self.total, self.desc, self.unit, self.step = total, desc, unit, step
        self.n = 0
        self._next = step
        self._started = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.total and self.n / self.total >= self._next:
            while self.n / self.total >= self._next:
                self._next += self.step
            rate = self.n / max(time.perf_counter() - self._started, 1e-9)
            logger.info("%s: %s/%s %s (%.0f%%, %.1f %s/s)", self.desc, f"{self.n:,}",
                        f"{self.total:,}", self.unit, 100 * self.n / self.total, rate, self.unit)

    def close(self) -> None:
        if self.n and self.n < self.total:
            logger.info("%s: stopped at %s/%s %s", self.desc, f"{self.n:,}", f"{self.total:,}",
                        self.unit)

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(total: int, desc: str, unit: str = "it", show: bool | None = None) -> Any:
    """A tqdm bar when ``show`` (default: stderr is a terminal), else a :class:`LogProgress`."""
    if show is None:
        show = sys.stderr.isatty()
    if show:
        return tqdm(total=total, desc=desc, unit=unit)
    return LogProgress(total, desc, unit)
