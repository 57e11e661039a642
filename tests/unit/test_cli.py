"""The command line's dispatch: ``spfmilter report`` reaches the report
with its own options and exit statuses, and ``spfmilter --help`` names it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spfmilter import cli
from tests.support.verdictlines import verdict


def test_help_names_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "spfmilter check ..." in out and "spfmilter report ..." in out


def test_report_is_a_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "mail.log"
    log.write_text(verdict("a@x.example", "softfail") + "\n")
    assert cli.main(["report", "--json", "--reject", "softfail,fail", str(log)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["reject"] == ["fail", "softfail"] and data["refusals"]["total"] == 1


@pytest.mark.parametrize(
    "argv", [["--reject", "softfail,pass"], ["--bogus"], ["/nonexistent/mail.log"]]
)
def test_report_errors_are_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["report", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(("usage: spfmilter report", "spfmilter report: "))
