"""The progress line: on a terminal only, a few times a second, erased at
the end."""

from __future__ import annotations

import io

from spfmilter.report.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_on_a_terminal() -> None:
    out, clock = Terminal(), Clock()
    progress = Progress(out, clock)
    clock.now += 2
    progress.advance(1_000_000, 50_000_000, "mail.log")
    clock.now += 0.1  # too soon to redraw
    progress.advance(10, 10, "mail.log")
    clock.now += 0.2
    progress.advance(999_990, 50_000_000, "mail.log.1.gz\x1b[2J")
    progress.done()
    assert out.getvalue() == (
        "\r\x1b[Kmail.log: 1,000,000 lines, 50.0 MB, 500,000 lines/s"
        "\r\x1b[Kmail.log.1.gz\\x1b[2J: 2,000,000 lines, 100.0 MB, 869,565 lines/s"
        "\r\x1b[K"
    )


def test_nothing_elsewhere() -> None:
    out = io.StringIO()
    progress = Progress(out, Clock())
    progress.advance(10, 10, "mail.log")
    progress.done()
    assert out.getvalue() == ""
    assert (progress.lines, progress.bytes) == (10, 10)
