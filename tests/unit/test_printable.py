"""Text made fit to show on one line: log lines and the report alike."""

from __future__ import annotations

import pytest

from spfmilter.printable import escape


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("mx.example.org", "mx.example.org"),
        ("bücher.example", "bücher.example"),
        ("a\x1b[2Jb", "a\\x1b[2Jb"),  # ECMA-48: erase the screen
        ("a\rb\nc\td", "a\\rb\\nc\\td"),
        ("\x9b31m", "\\x9b31m"),  # the C1 form of CSI
        ("abc\u202eexe.txt", "abc\\u202eexe.txt"),  # right-to-left override
        ("\u2028\x00\x7f", "\\u2028\\x00\\x7f"),
        ("\U000e0001", "\\ue0001"),
    ],
)
def test_escape(text: str, shown: str) -> None:
    assert escape(text) == shown
    assert escape(shown) == shown
    assert escape(text).isprintable()
