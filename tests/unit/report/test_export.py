"""The journal's export format: text and binary fields, entries that are not
spfmilter's, and lengths that lie."""

from __future__ import annotations

import io
import struct

import pytest

from spfmilter.report import export

VERDICT = "4XyZ1: verdict conn=1 client_ip=192.0.2.1 identity=mailfrom result=pass action=accept"


def text_entry(message: str, identifier: str = "spfmilter") -> bytes:
    return (
        b"__CURSOR=s=abc;i=1\n__REALTIME_TIMESTAMP=1764670501000000\n"
        + f"SYSLOG_IDENTIFIER={identifier}\nMESSAGE={message}\n_PID=4711\n\n".encode()
    )


def binary_field(name: bytes, value: bytes, length: int | None = None) -> bytes:
    size = len(value) if length is None else length
    return name + b"\n" + struct.pack("<Q", size) + value + b"\n"


def read(data: bytes) -> list[str]:
    stream = io.BytesIO(data)
    start = stream.read(export.CHUNK)
    return [m for batch, _ in export.messages(stream, start) for m in batch]


@pytest.fixture(params=[1 << 20, 7], ids=["one read", "many reads"])
def chunk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Reads of every size: a field, a length, a value split anywhere."""
    monkeypatch.setattr(export, "CHUNK", request.param)
    return int(request.param)


def test_text_and_binary_fields(chunk: int) -> None:
    binary = (
        b"__CURSOR=s=abc;i=2\nSYSLOG_IDENTIFIER=spfmilter\n"
        + binary_field(b"MESSAGE", VERDICT.encode() + b" x=a\nb\xff")
        + b"PRIORITY=6\n\n"
    )
    data = text_entry(VERDICT) + binary + text_entry("connect from x", "postfix/smtpd")
    assert read(data) == [VERDICT, VERDICT + " x=a\nb\N{REPLACEMENT CHARACTER}", ""]


def test_the_last_entry_needs_no_blank_line(chunk: int) -> None:
    assert read(text_entry(VERDICT)[:-1]) == [VERDICT]
    assert read(text_entry(VERDICT)[:-2]) == [VERDICT]


def test_an_entry_without_identifier_or_message(chunk: int) -> None:
    data = f"MESSAGE={VERDICT}\n\n__CURSOR=x\n\n".encode()
    assert read(data) == [VERDICT, ""]


def test_a_huge_length_is_skipped_not_held(chunk: int) -> None:
    data = (
        b"SYSLOG_IDENTIFIER=spfmilter\n"
        + binary_field(b"MESSAGE", b"x" * (export.FIELD_LIMIT + 1))
        + b"\n"
        + text_entry(VERDICT)
    )
    assert read(data) == ["", VERDICT]
    # A length far beyond the data: the stream simply ends.
    assert read(binary_field(b"MESSAGE", b"short", length=1 << 62)) == [""]


def test_a_cut_binary_field_ends_the_stream(chunk: int) -> None:
    assert read(text_entry(VERDICT) + binary_field(b"MESSAGE", b"abc", length=10)) == [VERDICT, ""]
    assert read(text_entry(VERDICT) + b"MESSAGE\n\x01\x00") == [VERDICT, ""]


def test_an_overlong_text_line_is_skipped(chunk: int) -> None:
    data = b"MESSAGE=" + b"y" * (export.FIELD_LIMIT + 10) + b"\n\n" + text_entry(VERDICT)
    assert read(data) == ["", VERDICT]
    assert read(b"MESSAGE=" + b"y" * (export.FIELD_LIMIT + 10)) == [""]


def test_bytes_are_reported_once(chunk: int) -> None:
    data = text_entry(VERDICT) * 3
    stream = io.BytesIO(data)
    start = stream.read(export.CHUNK)
    assert sum(size for _, size in export.messages(stream, start)) == len(data)


def test_batches_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "BATCH", 2)
    stream = io.BytesIO(text_entry(VERDICT) * 5)
    batches = [batch for batch, _ in export.messages(stream, b"")]
    assert [len(b) for b in batches] == [2, 2, 1]
