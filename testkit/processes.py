"""Processes the harness runs: a command that must succeed, and stopping a
process it started (SIGTERM, a wait, SIGKILL only if it hangs; only ever
given a Popen of our own, so that nothing else is signalled)."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


class CommandFailed(RuntimeError):
    """A command the harness needed exited with a status other than 0."""


def run(
    argv: Sequence[str | Path],
    *,
    what: str = "",
    timeout: float = 120,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` to its end and return what it printed; CommandFailed,
    with its status and output, when it fails (`what` names it there)."""
    done = subprocess.run(
        [str(arg) for arg in argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        name = what or " ".join(str(arg) for arg in argv)
        raise CommandFailed(f"{name} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done


def stop(process: subprocess.Popen[Any] | None, timeout: float) -> int | None:
    """SIGTERM `process` if it runs, wait up to `timeout` seconds, then
    SIGKILL; its exit status (None when there was no process)."""
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    return process.returncode
