"""Postfix + spfmilter + DNS on loopback, and an SMTP client for tests.

Owns the module-level stack the Postfix integration tests share (the real
daemon on a free port, a private Postfix pointing its smtpd_milters at it)
and one-call helpers that pose as a client with XCLIENT, run a transaction
and return every reply plus the delivered message.
"""

from __future__ import annotations

import re
import shutil
import smtplib
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path

from testkit.daemon import Daemon
from tests.support.postfix import PrivatePostfix

RCPT = "user@example.net"
# What the daemon logs for the test zone's TIMEOUT and SERVFAIL names.
DNS_TROUBLE = (r"^WARNING spfmilter.dns: DNS (timeout|server failure) looking up",)
PASS_IP = "198.51.100.7"
STRANGER_IP = "203.0.113.5"


@dataclass
class Stack:
    """A running daemon and the Postfix that uses it."""

    daemon: Daemon
    postfix: PrivatePostfix


@contextmanager
def postfix_stack(
    config: str,
    extra: Mapping[str, str] | None = None,
    allowed: tuple[str, ...] = (),
    postfix_allowed: tuple[str, ...] = (),
) -> Iterator[Stack]:
    """The daemon with `config` and a private Postfix using it as milter.

    At the end the daemon must not have logged warnings or tracebacks other
    than `allowed` and the DNS trouble the test zone's TIMEOUT and SERVFAIL
    names cause, nor Postfix any milter warning other than those matching
    `postfix_allowed` (regular expressions, for tests that break the milter
    on purpose).
    """
    allowed = (*allowed, *DNS_TROUBLE)
    # Not pytest's tmp_path: Postfix's delivery agent runs as another user
    # and must be able to search every directory above its Maildir.
    work = Path(tempfile.mkdtemp(prefix="spfmilter-postfix-"))
    work.chmod(0o755)
    daemon = Daemon(work / "milter", config)
    daemon.start()
    postfix = PrivatePostfix(work / "postfix", daemon.postfix_socket, extra=extra)
    try:
        postfix.start()
        yield Stack(daemon, postfix)
    finally:
        postfix.stop()
        daemon.stop()
    assert daemon.unexpected(allowed) == [], daemon.log_text()
    milter_warnings = [w for w in postfix.warnings() if "milter" in w]
    assert [w for w in milter_warnings if not any(re.search(a, w) for a in postfix_allowed)] == []
    shutil.rmtree(work)


@dataclass
class Sent:
    """Postfix's replies to one transaction and what was delivered."""

    mail: tuple[int, str]
    rcpts: list[tuple[int, str]] = field(default_factory=list)
    data: tuple[int, str] | None = None
    message: Message | None = None
    raw: bytes = b""

    def received_spf(self) -> list[str]:
        assert self.message is not None
        return [" ".join(v.split()) for v in self.message.get_all("Received-SPF") or []]


def transaction(
    smtp: smtplib.SMTP,
    postfix: PrivatePostfix,
    sender: str,
    rcpts: list[str],
    headers: Mapping[str, str] | None = None,
) -> Sent:
    """MAIL, RCPT..., DATA as far as Postfix lets it go; `headers` are added
    to the message above the test's own."""
    code, text = smtp.mail(sender)
    sent = Sent((code, text.decode()))
    if code >= 400:
        smtp.rset()
        return sent
    for rcpt in rcpts:
        code, text = smtp.rcpt(rcpt)
        sent.rcpts.append((code, text.decode()))
    if not any(code < 400 for code, _ in sent.rcpts):
        smtp.rset()
        return sent
    marker = f"<{uuid.uuid4()}@test.example>"
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    body = (
        f"{extra}Message-ID: {marker}\r\nSubject: spf test\r\nFrom: {sender or 'x@y'}\r\n\r\nhi\r\n"
    )
    code, text = smtp.data(body)
    sent.data = (code, text.decode())
    if code < 400:
        sent.raw = postfix.raw_message(marker)
        sent.message = postfix.wait_for_message(marker)
    return sent


def send(
    stack: Stack,
    ip: str,
    helo: str,
    sender: str,
    rcpts: list[str] | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    login: str | None = None,
    submission: bool = False,
) -> Sent:
    """One transaction on a new connection posing as `ip`/`helo` (and as a
    SASL-authenticated `login`), to the submission smtpd if asked."""
    smtp = stack.postfix.connect(ip, helo, login=login, submission=submission)
    try:
        return transaction(smtp, stack.postfix, sender, rcpts or [RCPT], headers)
    finally:
        smtp.quit()
