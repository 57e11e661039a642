"""The journal's export format, read as a stream of messages.

This module owns reading `journalctl -o export` output (systemd's "Journal
Export Format"): entries of fields separated by an empty line; a field is
`NAME=value` on one line, or, when its value is binary or holds a line
break, NAME on a line of its own, then the value's length as a 64-bit
little-endian number, the value, and a line feed.  Each entry becomes its
MESSAGE when spfmilter logged it (SYSLOG_IDENTIFIER, when present, starts
with "spfmilter"), or "" for any other entry, so that every entry counts as
one line.  Memory stays bounded whatever a length field claims: a value
longer than FIELD_LIMIT is skipped as it streams past, and its entry's
message is not read.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

CHUNK = 1 << 20  # bytes per read
FIELD_LIMIT = 1 << 16  # a verdict line is a few KiB
BATCH = 4096  # entries handed on at a time

# Marks a field whose value was too long to keep.
_SKIPPED = object()
# What _line_end() says instead of a position.
_END = -1
_DROPPED = -2


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def messages(stream: Readable, start: bytes) -> Iterator[tuple[list[str], int]]:
    """Batches of entries' messages ("" for entries not spfmilter's), each
    with the number of bytes read for it; `start` is what was already read
    from `stream`."""
    reader = _Reader(stream, start)
    batch: list[str] = []
    entry: dict[bytes, object] | None = None  # None between entries
    for name, value in reader.fields():
        if name is not None:
            entry = entry or {}
            if name in (b"MESSAGE", b"SYSLOG_IDENTIFIER"):
                entry[name] = value
            continue
        batch.append(_message(entry or {}))
        entry = None
        if len(batch) >= BATCH:
            yield batch, reader.taken()
            batch = []
    if entry is not None:  # the stream ended inside an entry
        batch.append(_message(entry))
    yield batch, reader.taken()


def _message(entry: dict[bytes, object]) -> str:
    identifier = entry.get(b"SYSLOG_IDENTIFIER", b"spfmilter")
    message = entry.get(b"MESSAGE")
    if not isinstance(identifier, bytes) or not identifier.startswith(b"spfmilter"):
        return ""
    if not isinstance(message, bytes):
        return ""
    return message.decode("utf-8", "replace")


class _Reader:
    """Fields of export format from a stream, through a bounded buffer."""

    def __init__(self, stream: Readable, start: bytes) -> None:
        self._stream = stream
        self._buffer = start
        self._pos = 0
        self._read = len(start)
        self._reported = 0

    def taken(self) -> int:
        """Bytes read since the last call."""
        taken, self._reported = self._read - self._reported, self._read
        return taken

    def _more(self) -> bool:
        """Read more into the buffer; False at the end of the stream."""
        chunk = self._stream.read(CHUNK)
        if not chunk:
            return False
        self._buffer = self._buffer[self._pos :] + chunk
        self._pos = 0
        self._read += len(chunk)
        return True

    def _have(self, size: int) -> bool:
        """Whether `size` bytes past the position are, or can be, buffered."""
        while len(self._buffer) - self._pos < size:
            if not self._more():
                return False
        return True

    def _skip(self, size: int) -> None:
        """Drop `size` bytes (fewer at the end of the stream)."""
        while size > len(self._buffer) - self._pos:
            size -= len(self._buffer) - self._pos
            self._buffer, self._pos = b"", 0
            if not self._more():
                return
        self._pos += size

    def _line_end(self) -> int:
        """The position of the next line feed (or of the end of a last line
        without one), reading as needed; _END at the end of the stream.  A
        line longer than FIELD_LIMIT is dropped up to its end: _DROPPED."""
        while True:
            end = self._buffer.find(b"\n", self._pos)
            if end >= 0:
                return end
            if len(self._buffer) - self._pos > FIELD_LIMIT:
                self._buffer, self._pos = b"", 0
                while self._more():
                    end = self._buffer.find(b"\n")
                    if end >= 0:
                        self._pos = end + 1
                        break
                    self._buffer = b""
                return _DROPPED
            if not self._more():
                return len(self._buffer) if self._pos < len(self._buffer) else _END

    def fields(self) -> Iterator[tuple[bytes | None, object]]:
        """(name, value) for each field, value _SKIPPED when too long, and
        (None, None) at the end of each entry."""
        while True:
            end = self._line_end()
            if end == _END:
                return
            if end == _DROPPED:
                yield b"", _SKIPPED
                continue
            line = self._buffer[self._pos : end]
            self._pos = end + 1
            if len(line) > FIELD_LIMIT:
                yield b"", _SKIPPED
                continue
            if not line:
                yield None, None
                continue
            name, equals, value = line.partition(b"=")
            if equals:
                yield name, value
                continue
            # A binary field: its length, its data, a line feed.
            if not self._have(8):
                yield name, _SKIPPED
                return
            size = int.from_bytes(self._buffer[self._pos : self._pos + 8], "little")
            self._pos += 8
            if size > FIELD_LIMIT:
                self._skip(size + 1)
                yield name, _SKIPPED
                continue
            if not self._have(size + 1):
                yield name, _SKIPPED
                return
            yield name, self._buffer[self._pos : self._pos + size]
            self._pos += size + 1
