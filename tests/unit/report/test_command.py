"""``spfmilter report``: options, inputs in order, outputs, exit statuses."""

from __future__ import annotations

import gzip
import io
import json
import os
import select
import sys
from pathlib import Path

import pytest

from spfmilter.config.values import parse_results
from spfmilter.report import command, main
from spfmilter.report.command import EXIT_FAILED, EXIT_USAGE
from spfmilter.report.scan import WorkerError
from spfmilter.report.tally import REJECTABLE
from tests.support.verdictlines import verdict

LOG = [
    "Dec  2 10:15:01 mx postfix/smtpd[123]: connect from unknown[203.0.113.9]",
    verdict("a@x.example", "fail", "reject"),
    verdict("b@y.example", "softfail"),
    verdict("c@z.example", "pass"),
]


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "mail.log"
    path.write_text("".join(f"{line}\n" for line in LOG))
    return path


def report_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert main(["--json", *argv]) == 0
    data: dict[str, object] = json.loads(capsys.readouterr().out)
    return data


def test_text_by_default(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(log)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"spfmilter report: 4 lines read from {log}\n")
    assert "  would refuse (MAIL FROM)  " in out
    assert err == ""  # no progress: standard error is no terminal


def test_json(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = report_json(capsys, str(log))
    assert (data["lines"], data["verdicts"], data["other_lines"], data["reject"]) == (
        4,
        3,
        1,
        ["fail"],
    )
    refusals = data["refusals"]
    assert isinstance(refusals, dict) and refusals["total"] == 1
    data = report_json(capsys, "--reject", " SoftFail , fail ", str(log))
    assert data["reject"] == ["fail", "softfail"]
    assert isinstance(data["refusals"], dict) and data["refusals"]["total"] == 2


def test_html(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--html", str(log)]) == 0
    assert capsys.readouterr().out.startswith("<!DOCTYPE html>")


def test_files_in_order_plain_and_gzip(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    packed = tmp_path / "mail.log.2.gz"
    packed.write_bytes(gzip.compress(log.read_bytes()))
    data = report_json(capsys, str(log), str(packed))
    assert (data["lines"], data["verdicts"], data["inputs"]) == (8, 6, [str(log), str(packed)])


def test_standard_input(
    log: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for argv in ([], ["-"]):
        stdin = io.TextIOWrapper(io.BufferedReader(io.BytesIO(gzip.compress(log.read_bytes()))))
        monkeypatch.setattr(sys, "stdin", stdin)
        data = report_json(capsys, *argv)
        assert (data["lines"], data["verdicts"], data["inputs"]) == (4, 3, ["standard input"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--reject", "pass"], "expected a comma list of fail, softfail, neutral, none, permerror"),
        (["--reject", "fail,temperror"], "got 'temperror'"),
        (["--reject", ""], "got nothing"),
        (["--reject", " , "], "got nothing"),
        (["--json", "--html"], "not allowed with argument"),
        (["--csv"], "unrecognized arguments: --csv"),
    ],
)
def test_usage_errors(
    argv: list[str], message: str, log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, str(log)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("usage: spfmilter report ") and message in err


def test_a_terminal_on_standard_input_needs_a_name(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    main_fd, other_fd = os.openpty()
    with os.fdopen(other_fd, "r") as terminal:
        monkeypatch.setattr(sys, "stdin", terminal)
        assert main([]) == EXIT_USAGE
    os.close(main_fd)
    out, err = capsys.readouterr()
    assert out == "" and "name the log files (or pipe a log in, or name '-')" in err


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--reject RESULTS" in out
    for status in (0, EXIT_FAILED, EXIT_USAGE):
        assert f"\n  {status}  " in out


def test_reject_takes_what_mailfrom_reject_takes() -> None:
    # The log's vocabulary and the configuration's agree.
    everything = ",".join(REJECTABLE)
    assert {r.value for r in parse_results(everything)} == set(REJECTABLE)


def test_a_directory_is_no_log(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(log), str(tmp_path)]) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"spfmilter report: {tmp_path}: ")


def test_a_failed_worker_writes_no_report(
    log: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def failing(*args: object) -> None:
        raise WorkerError("report worker 4242 exited with -9")

    monkeypatch.setattr(command, "scan", failing)
    assert main([str(log)]) == EXIT_FAILED
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "spfmilter report: failed: report worker 4242 exited with -9\n"


def test_an_unreadable_input_stops_before_any_report(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "mail.log.9\x1b[2J"
    assert main([str(log), str(missing)]) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"spfmilter report: {tmp_path}/mail.log.9\\x1b[2J: No such file or directory\n"
    corrupt = tmp_path / "mail.log.3.gz"
    corrupt.write_bytes(gzip.compress(log.read_bytes() * 1000)[:200])
    assert main([str(log), str(corrupt)]) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"spfmilter report: {corrupt}: ")


def test_an_output_that_cannot_encode_a_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "mail.log"
    path.write_text(verdict("a@bücher.example", "fail") + "\n")
    out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr(sys, "stdout", out)
    assert main([str(path)]) == 0
    out.flush()
    written = out.buffer
    assert isinstance(written, io.BytesIO)
    assert "b\\xfccher.example" in written.getvalue().decode("ascii")


def test_progress_on_a_terminal(
    log: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    main_fd, other_fd = os.openpty()
    with os.fdopen(other_fd, "w") as terminal:
        monkeypatch.setattr(sys, "stderr", terminal)
        assert main([str(log)]) == 0
    shown = _drain(main_fd)
    assert f"{log}: 4 lines, 0.0 MB, " in shown and shown.endswith("\r\x1b[K")
    assert "lines" not in capsys.readouterr().err


def _drain(fd: int) -> str:
    """Everything written to the terminal so far (a pty hands it over in
    pieces, one write at a time)."""
    data = b""
    while select.select([fd], [], [], 0.5)[0]:
        try:
            piece = os.read(fd, 4096)
        except OSError:  # EIO: the other end is closed and all is read
            break
        if not piece:
            break
        data += piece
    os.close(fd)
    return data.decode()
