"""Stopping a process the harness started: SIGTERM, a wait, SIGKILL only if
it hangs.  Only ever given a Popen of our own, so that nothing else is
signalled."""

from __future__ import annotations

import signal
import subprocess
from typing import Any


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
