"""Text made fit to show on one line: the daemon's log lines and the
report's output alike.  A value taken from mail or DNS (a sender address, a
HELO name, an explanation) may hold any character; escaped here, it holds
no line break of any kind (LF, CR, VT, FF, NEL, U+2028, U+2029, ...) and no
control character a terminal would act on.
"""

from __future__ import annotations

# Short forms for the commonest characters str.isprintable() refuses; the
# rest become \xNN or \uNNNN.
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape(text: str) -> str:
    """`text` with every non-printable character escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _SHORT.get(c) or _code(c) for c in text)


def _code(char: str) -> str:
    point = ord(char)
    return f"\\x{point:02x}" if point < 0x100 else f"\\u{point:04x}"
