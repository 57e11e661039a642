"""Counting in worker processes: the same report as in one, and failures
that stop it cleanly."""

from __future__ import annotations

import gzip
import io
import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from spfmilter.report import inputs, main, scan
from spfmilter.report.command import EXIT_USAGE
from spfmilter.report.inputs import open_input
from spfmilter.report.progress import Progress
from spfmilter.report.scan import WorkerError, _Pool
from tests.support.verdictlines import skip, verdict


def sample() -> str:
    lines = []
    for n in range(3000):
        lines.append(f"Dec  2 10:15:01 mx postfix/smtpd[{n}]: connect from unknown[203.0.113.9]")
        lines.append(
            verdict(
                f"u{n}@d{n % 37}.example",
                ("pass", "fail", "softfail", "none")[n % 4],
                ("accept", "reject")[n % 4 == 1],
                client_ip=f"203.0.113.{n % 11}",
                client_name=f"mx{n % 11}.example" if n % 3 == 0 else "unknown",
                **({"rescue": "dkim", "rescue_domain": f"d{n % 37}.example"} if n % 8 == 1 else {}),
            )
        )
        if n % 50 == 0:
            lines.append(skip("SASL authenticated as someone"))
    return "".join(f"{line}\n" for line in lines)


def scanned(paths: list[Path], processes: int) -> object:
    sources = [open_input(str(path)) for path in paths]
    try:
        tally = scan.scan(sources, {"fail", "softfail"}, Progress(io.StringIO()), processes)
    finally:
        for source in sources:
            source.close()
    return tally.summary([str(path) for path in paths])


def test_workers_count_what_one_process_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = tmp_path / "mail.log"
    plain.write_text(sample())
    packed = tmp_path / "mail.log.1.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    alone = scanned([plain, packed], 1)
    # Many small batches, all of them counted by workers.
    monkeypatch.setattr(inputs, "CHUNK", 4096)
    monkeypatch.setattr(scan, "SEQUENTIAL", 0)
    assert scanned([plain, packed], 2) == alone
    # Part counted here, the rest by workers.
    monkeypatch.setattr(scan, "SEQUENTIAL", 100_000)
    assert scanned([plain, packed], 3) == alone
    assert multiprocessing.active_children() == []


def test_workers_that_finished_exit_by_themselves() -> None:
    # Not ended by a signal once they handed their Tally back: an ended one
    # can leave a semaphore for the resource tracker to warn about.
    pool = _Pool(2, frozenset({"fail"}))
    workers = list(pool._workers)
    try:
        pool.put(sample().encode())
        parts = pool.finish()
    finally:
        pool.stop()
    assert sum(part.verdicts for part in parts) == 3000
    assert [worker.exitcode for worker in workers] == [0, 0]


def test_a_failing_worker_fails_the_report() -> None:
    pool = _Pool(2, frozenset({"fail"}))
    try:
        pool.put(5)  # type: ignore[arg-type]  # no batch: the worker's feed raises
        with pytest.raises(WorkerError, match="TypeError"):
            pool.finish()
    finally:
        pool.stop()
    assert multiprocessing.active_children() == []


def test_a_worker_that_dies_fails_the_report(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan, "POLL", 0.05)
    pool = _Pool(2, frozenset({"fail"}))
    try:
        os.kill(pool._workers[0].pid or 0, signal.SIGKILL)
        with pytest.raises(WorkerError, match="exited with -9"):
            pool.finish()
    finally:
        pool.stop()
    assert multiprocessing.active_children() == []


def test_an_unreadable_input_ends_the_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "mail.log"
    good.write_text(sample())
    cut = tmp_path / "mail.log.2.gz"
    cut.write_bytes(gzip.compress(sample().encode())[:5000])
    monkeypatch.setattr(scan, "SEQUENTIAL", 0)
    assert main([str(good), str(cut)]) == EXIT_USAGE
    assert capsys.readouterr().err.startswith(f"spfmilter report: {cut}: ")
    assert multiprocessing.active_children() == []
