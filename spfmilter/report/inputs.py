"""The report's inputs: files and standard input, plain or gzip-compressed,
log lines or the journal's export format.

This module owns turning what an administrator names into batches of log
lines.  Compression is recognized by content, not by name (a rotated
`mail.log.2.gz` and a compressed stream on standard input alike); so is the
journal's export format (`journalctl -o export` starts with a field name:
upper-case letters, digits and underscores, then "=" or a line feed, which
no log line does).  Inputs are opened before anything is read, so that a
missing or unreadable file stops the report before any work; a read that
fails later (a truncated or corrupt archive) stops it too, naming the file:
a report silently missing part of a file would mislead.  Memory stays
bounded: files are read 1 MiB at a time, and a line is held across reads
up to LINE_LIMIT bytes; the rest of a longer one is dropped and the whole
counts as one line.
"""

from __future__ import annotations

import gzip
import re
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from spfmilter.report import export

CHUNK = 1 << 20  # bytes per read
LINE_LIMIT = 1 << 20
STDIN = "-"
_GZIP_MAGIC = b"\x1f\x8b"  # RFC 1952 section 2.3.1
_EXPORT_START = re.compile(rb"[A-Z_][A-Z0-9_]*[=\n]")


class InputError(Exception):
    """An input that cannot be read; the message names it."""


class Stream(Protocol):
    """What the report needs of an open input."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


@dataclass
class Input:
    """One named input, open for reading: `stream` decompresses what `raw`
    reads, or is `raw` itself."""

    name: str
    stream: Stream
    raw: Stream

    def close(self) -> None:
        """Close the file (standard input stays open: it is not ours)."""
        if self.stream is not self.raw:
            self.stream.close()  # a decompressor, which leaves `raw` open
        if self.name != STDIN:
            self.raw.close()


def open_input(name: str) -> Input:
    """Open a file (or "-", standard input), decompressing when it is gzip."""
    try:
        raw = sys.stdin.buffer if name == STDIN else open(name, "rb")  # noqa: SIM115
        peek = getattr(raw, "peek", None)
        head = peek(2)[:2] if peek else b""
    except OSError as error:
        raise InputError(f"{name}: {error.strerror or error}") from None
    if head == _GZIP_MAGIC:
        return Input(name, gzip.GzipFile(fileobj=raw, mode="rb"), raw)
    return Input(name, raw, raw)


# What inputs hand on: log lines still encoded, as read (whole lines
# joined by line feeds, so that another process can take them as they
# are), or the messages of journal entries.
Batch = bytes | list[str]


def batches(source: Input) -> Iterator[tuple[Batch, int]]:
    """Batches of lines (or journal messages), each with the number of
    bytes read for it."""
    try:
        start = source.stream.read(CHUNK)
        if _EXPORT_START.match(start):
            yield from export.messages(source.stream, start)
        else:
            yield from _lines(source.stream, start)
    except (OSError, EOFError, zlib.error) as error:
        raise InputError(f"{source.name}: {error}") from None


def lines(batch: Batch) -> list[str]:
    """The lines of a batch, as text (what is not UTF-8 replaced)."""
    if isinstance(batch, bytes):
        return batch.decode("utf-8", "replace").split("\n")
    return batch


def count(batch: Batch) -> int:
    """How many lines a batch holds, without decoding them."""
    return batch.count(b"\n") + 1 if isinstance(batch, bytes) else len(batch)


def _lines(stream: Stream, data: bytes) -> Iterator[tuple[bytes, int]]:
    tail = b""
    dropping = False  # inside a line longer than LINE_LIMIT
    size = 0  # bytes read and not yet handed on
    while data:
        size += len(data)
        data = tail + data
        end = data.rfind(b"\n")
        if end < 0:
            tail = data
            if len(tail) > LINE_LIMIT:
                tail, dropping = b"", True
        else:
            tail = data[end + 1 :]
            block = data[:end]
            if dropping:
                # The rest of the long line: one empty line.
                cut = block.find(b"\n")
                block, dropping = (block[cut:] if cut >= 0 else b""), False
            yield block, size
            size = 0
        data = stream.read(CHUNK)
    if tail or dropping:
        yield (b"" if dropping else tail), size
