"""Inputs: files and standard input, gzip by content, the export format by
content, long lines, and the errors that name a file."""

from __future__ import annotations

import gzip
import io
import sys
from pathlib import Path

import pytest

from spfmilter.report import inputs
from spfmilter.report.inputs import InputError, batches, count, lines, open_input

VERDICT = "4XyZ1: verdict conn=1 client_ip=192.0.2.1 identity=mailfrom result=pass action=accept"
TEXT = f"Dec  2 10:15:01 mx spfmilter[1]: {VERDICT}\nDec  2 10:15:02 mx postfix/smtpd[2]: x\n"
EXPORT = f"__CURSOR=s=1\nSYSLOG_IDENTIFIER=spfmilter\nMESSAGE={VERDICT}\n\n"


def lines_of(path: str) -> tuple[list[str], int]:
    source = open_input(path)
    try:
        found = list(batches(source))
    finally:
        source.close()
    for batch, _ in found:
        assert count(batch) == len(lines(batch))
    return [line for batch, _ in found for line in lines(batch)], sum(size for _, size in found)


def test_plain_and_gzip_read_alike(tmp_path: Path) -> None:
    plain = tmp_path / "mail.log.1"
    plain.write_text(TEXT)
    packed = tmp_path / "mail.log.2.gz"
    packed.write_bytes(gzip.compress(TEXT.encode()))
    # Content, not name: a compressed file without .gz too.
    unnamed = tmp_path / "mail.log.3"
    unnamed.write_bytes(gzip.compress(TEXT.encode()) + gzip.compress(TEXT.encode()))
    expected = TEXT.splitlines()
    assert lines_of(str(plain)) == (expected, len(TEXT))
    assert lines_of(str(packed)) == (expected, len(TEXT))
    assert lines_of(str(unnamed))[0] == expected * 2


def test_export_format_is_recognized(tmp_path: Path) -> None:
    path = tmp_path / "journal.export"
    path.write_text(EXPORT * 2)
    assert lines_of(str(path))[0] == [VERDICT, VERDICT]
    packed = tmp_path / "journal.export.gz"
    packed.write_bytes(gzip.compress((EXPORT * 2).encode()))
    assert lines_of(str(packed))[0] == [VERDICT, VERDICT]


def test_standard_input(monkeypatch: pytest.MonkeyPatch) -> None:
    for data in (TEXT.encode(), gzip.compress(TEXT.encode())):
        stdin = io.TextIOWrapper(io.BufferedReader(io.BytesIO(data)))
        monkeypatch.setattr(sys, "stdin", stdin)
        assert lines_of("-")[0] == TEXT.splitlines()
        assert not stdin.closed  # not ours to close


def test_a_last_line_without_line_feed_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"a\r\nb\xffc")
    assert lines_of(str(path))[0] == ["a\r", "b\N{REPLACEMENT CHARACTER}c"]


def test_a_line_longer_than_the_limit_counts_as_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inputs, "CHUNK", 16)
    monkeypatch.setattr(inputs, "LINE_LIMIT", 32)
    path = tmp_path / "log"
    path.write_bytes(b"first\n" + b"x" * 200 + b"\nlast\n" + b"y" * 100)
    assert lines_of(str(path)) == (["first", "", "last", ""], 6 + 201 + 5 + 100)


def test_reads_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No line longer than LINE_LIMIT plus a read is ever held."""
    monkeypatch.setattr(inputs, "CHUNK", 16)
    monkeypatch.setattr(inputs, "LINE_LIMIT", 32)
    path = tmp_path / "log"
    path.write_bytes(b"z" * 10_000)
    source = open_input(str(path))
    held = [len(batch) for batch, _ in batches(source)]
    source.close()
    assert held == [0]


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unopenable_input_names_the_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "mail.log"
    if kind == "directory":
        path.mkdir()
    with pytest.raises(InputError, match=f"^{path}: "):
        open_input(str(path))


def test_a_truncated_archive_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mail.log.2.gz"
    path.write_bytes(gzip.compress(TEXT.encode() * 100)[:-20])
    with pytest.raises(InputError, match=rf"^{path}: .*(ended|end-of-stream|CRC)"):
        lines_of(str(path))
    path.write_bytes(gzip.compress(TEXT.encode()) + b"trailing garbage")
    with pytest.raises(InputError, match=f"^{path}: "):
        lines_of(str(path))
