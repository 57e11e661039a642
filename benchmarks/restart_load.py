"""Mail through a real Postfix while spfmilter is restarted or upgraded.

Run on the mail host itself (the admin-path test runs it in its container):
a steady stream of messages, one SMTP session each, goes to Postfix on port
25, posing as an outside client with XCLIENT (Postfix must list the sender
in smtpd_authorized_xclient_hosts), so that every message passes through
the milter.  Meanwhile COMMAND runs --times times, each after --gap
seconds of undisturbed stream.  Each message's fate and time is counted:
accepted, deferred (any 4xx, or a broken session) or rejected, and the
slowest and median time of a session.

    python3 -m benchmarks.restart_load --times 10 -- systemctl restart spfmilter

Prints one JSON object; exits 1 when a message was deferred or rejected.
Only the standard library: it runs with Debian's python3 alone.
"""

from __future__ import annotations

import argparse
import json
import smtplib
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

# A client the test zone's spf-pass.example.org authorizes (testkit/zones/core.yaml).
CLIENT = "198.51.100.7"
HELO = "helo-pass.example.org"
SENDER = "alice@spf-pass.example.org"


@dataclass
class Tally:
    """What happened to the messages sent so far."""

    seconds: list[float] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, took: float, problem: str | None, temporary: bool) -> None:
        with self.lock:
            self.seconds.append(took)
            if problem is not None:
                (self.deferred if temporary else self.rejected).append(problem)


def send_one(server: str, recipient: str, tally: Tally) -> None:
    """One SMTP session posing as CLIENT, one message."""
    start = time.monotonic()
    try:
        with smtplib.SMTP(server, 25, timeout=120) as smtp:
            smtp.ehlo(HELO)
            code, text = smtp.docmd("XCLIENT", f"ADDR={CLIENT} NAME=[UNAVAILABLE] HELO={HELO}")
            if code != 220:
                raise smtplib.SMTPResponseException(code, text)
            smtp.ehlo(HELO)
            smtp.sendmail(SENDER, [recipient], f"From: <{SENDER}>\r\nSubject: load\r\n\r\nx\r\n")
    except smtplib.SMTPResponseException as error:
        tally.add(
            time.monotonic() - start,
            f"{error.smtp_code} {error.smtp_error!r}",
            error.smtp_code < 500,
        )
        return
    except smtplib.SMTPRecipientsRefused as error:
        code, text = next(iter(error.recipients.values()))
        tally.add(time.monotonic() - start, f"{code} {text!r}", code < 500)
        return
    except (OSError, smtplib.SMTPException) as error:
        tally.add(time.monotonic() - start, f"session broken: {error}", True)
        return
    tally.add(time.monotonic() - start, None, False)


def stream(server: str, recipient: str, tally: Tally, stop: threading.Event) -> None:
    """Messages back to back until `stop`."""
    while not stop.is_set():
        send_one(server, recipient, tally)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.restart_load")
    parser.add_argument("--times", type=int, default=10, help="how often COMMAND runs")
    parser.add_argument("--gap", type=float, default=3.0, help="seconds of stream before each")
    parser.add_argument("--streams", type=int, default=2, help="concurrent senders")
    parser.add_argument("--server", default="127.0.0.1")
    parser.add_argument("--rcpt", default="user@localhost")
    parser.add_argument("command", nargs="+", help="what to run, e.g. systemctl restart spfmilter")
    args = parser.parse_args(argv)

    tally = Tally()
    stop = threading.Event()
    senders = [
        threading.Thread(target=stream, args=(args.server, args.rcpt, tally, stop))
        for _ in range(args.streams)
    ]
    for sender in senders:
        sender.start()
    commands: list[float] = []
    failed: list[str] = []
    try:
        for _ in range(args.times):
            time.sleep(args.gap)
            start = time.monotonic()
            done = subprocess.run(args.command, capture_output=True, text=True, check=False)
            commands.append(time.monotonic() - start)
            if done.returncode != 0:
                failed.append(f"exit {done.returncode}: {done.stderr.strip()}")
        time.sleep(args.gap)
    finally:
        stop.set()
        for sender in senders:
            sender.join()
    seconds = sorted(tally.seconds)
    result = {
        "command": " ".join(args.command),
        "times": args.times,
        "command_failures": failed,
        "command_seconds_median": round(statistics.median(commands), 2),
        "command_seconds_max": round(max(commands), 2),
        "messages": len(seconds),
        "deferred": len(tally.deferred),
        "rejected": len(tally.rejected),
        "problems": (tally.deferred + tally.rejected)[:10],
        "session_seconds_median": round(statistics.median(seconds), 3),
        "session_seconds_max": round(seconds[-1], 3),
    }
    print(json.dumps(result))
    return 1 if tally.deferred or tally.rejected or failed else 0


if __name__ == "__main__":
    sys.exit(main())
