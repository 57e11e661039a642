"""How far a long report has got, for whoever watches the terminal.

This module owns the one progress line: lines read, megabytes read and
lines per second, redrawn in place on standard error at most a few times a
second, and erased at the end.  Only when standard error is a terminal:
a report run from cron or into a file gets nothing of it, and standard
output (the report itself) never does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from spfmilter.printable import escape

INTERVAL = 0.25  # seconds between redraws
_ERASE = "\r\x1b[K"  # carriage return, then ECMA-48 EL: erase to the end of the line


class Progress:
    """Counts lines and bytes, and shows them when `stream` is a terminal."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._clock = clock
        self.shown = stream.isatty()
        self._start = clock()
        self._drawn: float | None = None
        self.lines = 0
        self.bytes = 0

    def advance(self, lines: int, size: int, name: str) -> None:
        """`lines` and `size` bytes more were read from input `name`."""
        self.lines += lines
        self.bytes += size
        if not self.shown:
            return
        now = self._clock()
        if self._drawn is not None and now - self._drawn < INTERVAL:
            return
        self._drawn = now
        rate = self.lines / max(now - self._start, 1e-9)
        self._stream.write(
            f"{_ERASE}{escape(name)}: {self.lines:,} lines, "
            f"{self.bytes / 1e6:,.1f} MB, {rate:,.0f} lines/s"
        )
        self._stream.flush()

    def done(self) -> None:
        """Erase the line, so that what follows starts clean."""
        if self._drawn is not None:
            self._stream.write(_ERASE)
            self._stream.flush()
