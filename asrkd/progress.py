"""Progress of a long loop: a tqdm bar on a terminal, a plain log line per interval otherwise.

A bar redrawn with carriage returns is for a person at a terminal; in a CI log, a file or a pipe it
becomes one endless line. `progress` picks by whether stderr is a terminal:

    bar = progress(total=600, unit="step", desc="train")
    for ...:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")
    bar.close()

Off a terminal it writes ``train: 120/600 step (20 %), 3.1 step/s, loss=1.234`` at most every
``interval`` seconds (30 by default) and once at the end.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class LineProgress:
    """The tqdm calls asrkd uses (`update`, `set_postfix`, `close`), as a line per interval."""

    def __init__(self, total: int, initial: int = 0, unit: str = "it", desc: str | None = None,
                 interval: float = 30.0, file: TextIO | None = None):
        self.total, self.n, self.unit, self.desc = total, initial, unit, desc or "progress"
        self.interval = interval
        self.file = file
        self._start_n = initial
        self._start = self._last = time.monotonic()
        self._postfix = ""
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._last >= self.interval:
            self._write()

    def set_postfix(self, **values: Any) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.n > self._start_n:
                self._write()

    def _write(self) -> None:
        now = time.monotonic()
        self._last = now
        rate = (self.n - self._start_n) / max(now - self._start, 1e-9)
        share = f" ({100 * self.n / self.total:.0f} %)" if self.total else ""
        line = f"{self.desc}: {self.n}/{self.total} {self.unit}{share}, {rate:.1f} {self.unit}/s"
        print(line + (f", {self._postfix}" if self._postfix else ""), file=self.file or sys.stderr, flush=True)


class _Disabled:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress(total: int, *, initial: int = 0, unit: str = "it", desc: str | None = None,
             enabled: bool = True, interval: float = 30.0):
    """A tqdm bar when stderr is a terminal, else a `LineProgress`; nothing when not ``enabled``."""
    if not enabled:
        return _Disabled()
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, unit=unit, desc=desc, dynamic_ncols=True, file=sys.stderr)
    return LineProgress(total, initial=initial, unit=unit, desc=desc, interval=interval)
