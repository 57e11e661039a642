"""Robustness of the real daemon against hostile clients and crashes.

This module owns two kinds of abuse.  Milter-protocol abuse on the daemon's
socket, written byte by byte: packets cut short, length fields that lie
(zero, 2^31, 2^32 - 1, just above libmilter's maximum), unknown and
out-of-order commands, clients that stall mid-packet, and a thousand
connections opened and dropped at every stage.  Each time the daemon must
keep its PID, keep answering a normal transaction on another connection
(header present, right result) during and after the abuse, log no traceback
or unexpected warning, and give back the descriptors and threads the abusive
connections held.  And crash safety through a private Postfix
(milter_default_action = tempfail): SIGKILL while transactions are in flight
must give clients 4xx, deliver nothing unchecked, and after a restart on the
same socket the same transactions must go through with their header.

Load and memory over many transactions live in test_robustness_load.py.
"""

from __future__ import annotations

import smtplib
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testkit.daemon import Daemon, ProcessStats, config_text, wait_for
from testkit.dnsserver import ZONES, DNSTestServer, load_zone_file
from testkit.milterclient import (
    ALL_ACTIONS,
    ALL_PROTOCOL,
    MILTER_MAX_DATA_SIZE,
    SMFI_PROT_VERSION,
    SMFIC_BODYEOB,
    SMFIC_CONNECT,
    SMFIC_HELO,
    SMFIC_MAIL,
    SMFIC_OPTNEG,
    SMFIC_RCPT,
    SMFIC_UNKNOWN,
    MilterClient,
    MilterError,
    frame,
)
from tests.conftest import MakeDaemon
from tests.support.postfix import PrivatePostfix
from tests.support.stack import PASS_IP, RCPT, postfix_stack

PASS_HELO = "helo-pass.example.org"
PASS_SENDER = "alice@spf-pass.example.org"

# How long the daemon may take to drop a connection it cannot make sense of,
# and to finish the threads and close the descriptors of connections that
# are gone: generous bounds, not measurements.
HANGUP_SECONDS = 5.0
SETTLE_SECONDS = 10.0
# What "back near the starting values" allows: a descriptor or thread that
# is still being torn down when we look, not one per abusive connection.
FD_SLACK = 2
THREAD_SLACK = 1
# A normal transaction must not wait behind abusive clients; its DNS answers
# are cached, so it takes milliseconds when nothing blocks it.
VERIFIED_SECONDS = 5.0


# ---------------------------------------------------------------- helpers


def verified_transaction(daemon: Daemon) -> None:
    """One normal transaction on a new connection, checked end to end."""
    started = time.monotonic()
    with MilterClient(daemon.socket, timeout=VERIFIED_SECONDS) as client:
        client.negotiate()
        client.connect("client.example", PASS_IP)
        client.helo(PASS_HELO)
        result = client.transaction(f"<{PASS_SENDER}>", [f"<{RCPT}>"])
    elapsed = time.monotonic() - started
    assert result.final.kind == "continue", result
    assert result.eom is not None
    headers = [m.value or "" for m in result.eom.modifications if m.name == "Received-SPF"]
    assert len(headers) == 1, result.eom.modifications
    assert headers[0].startswith("pass (spf-pass.example.org: ")
    assert f'envelope-from="{PASS_SENDER}"' in headers[0]
    assert elapsed < VERIFIED_SECONDS, f"a normal transaction took {elapsed:.2f} s"


def warmed_up(daemon: Daemon) -> ProcessStats:
    """Run one transaction (so lazily opened resources exist), then measure."""
    verified_transaction(daemon)
    return daemon.steady_stats()


def assert_recovered(daemon: Daemon, pid: int, baseline: ProcessStats) -> None:
    """Same process, resources given back, still answering.

    The make_daemon fixture checks the log (no traceback, no unexpected
    warning) when the test ends.
    """
    assert daemon.pid == pid
    assert daemon.process is not None and daemon.process.poll() is None, daemon.log_text()
    now = daemon.stats_back_to(baseline, FD_SLACK, THREAD_SLACK, SETTLE_SECONDS)
    assert now.fds <= baseline.fds + FD_SLACK, (baseline, now)
    assert now.threads <= baseline.threads + THREAD_SLACK, (baseline, now)
    verified_transaction(daemon)


def optneg() -> bytes:
    """An SMFIC_OPTNEG packet offering our version, all actions, all steps."""
    return frame(SMFIC_OPTNEG, struct.pack(">III", SMFI_PROT_VERSION, ALL_ACTIONS, ALL_PROTOCOL))


def connect_packet(ip: str) -> bytes:
    """An SMFIC_CONNECT packet for an IPv4 client on port 25."""
    return frame(
        SMFIC_CONNECT, b"client.example\0" + b"4" + struct.pack(">H", 25) + ip.encode() + b"\0"
    )


def negotiated(daemon: Daemon) -> MilterClient:
    client = MilterClient(daemon.socket, timeout=10)
    client.open()
    client.negotiate()
    return client


def in_transaction(daemon: Daemon) -> MilterClient:
    """A connection inside a mail transaction: MAIL and RCPT accepted."""
    client = negotiated(daemon)
    client.connect("client.example", PASS_IP)
    client.helo(PASS_HELO)
    assert client.mail(f"<{PASS_SENDER}>").kind == "continue"
    assert client.rcpt(f"<{RCPT}>").kind == "continue"
    return client


def fresh(daemon: Daemon) -> MilterClient:
    client = MilterClient(daemon.socket, timeout=10)
    client.open()
    return client


STAGES: dict[str, Callable[[Daemon], MilterClient]] = {
    "fresh": fresh,
    "negotiated": negotiated,
    "in-transaction": in_transaction,
}


# ---------------------------------------------------------------- malformed packets

# Packets libmilter cannot accept: each must end the one connection (at
# once, without waiting for the data a length field promises) and nothing
# else.  A length counts the command byte, so MILTER_MAX_DATA_SIZE + 2
# announces a payload one byte above the largest libmilter accepts.
MALFORMED: dict[str, bytes] = {
    "length-0": frame(SMFIC_MAIL, length=0),
    "length-2^31": frame(SMFIC_MAIL, b"<x@example.org>\0", length=2**31),
    "length-2^32-1": frame(SMFIC_MAIL, b"<x@example.org>\0", length=2**32 - 1),
    "length-above-max": frame(SMFIC_MAIL, b"<x@example.org>\0", length=MILTER_MAX_DATA_SIZE + 2),
    "unknown-command": frame(b"Z", b"payload\0"),
    "nul-command": frame(b"\0", b"payload\0"),
    "mail-without-argument": frame(SMFIC_MAIL),
}


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("packet", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_packet_ends_only_its_own_connection(
    make_daemon: MakeDaemon, stage: str, packet: bytes
) -> None:
    daemon = make_daemon()
    pid, baseline = daemon.pid, warmed_up(daemon)
    abuser = STAGES[stage](daemon)
    try:
        verified_transaction(daemon)  # while the abusive connection is open
        abuser.send_raw(packet)
        abuser.wait_hangup(HANGUP_SECONDS)
    finally:
        abuser.close()
    assert_recovered(daemon, pid, baseline)


def test_short_option_negotiation_ends_its_connection(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    pid, baseline = daemon.pid, warmed_up(daemon)
    abuser = fresh(daemon)
    try:
        abuser.send_raw(frame(SMFIC_OPTNEG, struct.pack(">I", 6)))  # version only
        abuser.wait_hangup(HANGUP_SECONDS)
    finally:
        abuser.close()
    assert_recovered(daemon, pid, baseline)


# ---------------------------------------------------------------- truncated packets

# The next packet each stage would send, to be cut short.
NEXT_PACKET: dict[str, bytes] = {
    "fresh": optneg(),
    "negotiated": connect_packet("203.0.113.5"),
    "in-transaction": frame(SMFIC_RCPT, b"<second@example.net>\0"),
}
CUTS: dict[str, Callable[[bytes], bytes]] = {
    "inside-length": lambda packet: packet[:2],
    "after-command-byte": lambda packet: packet[:5],
    "inside-payload": lambda packet: packet[: 5 + (len(packet) - 5) // 2],
}


@pytest.mark.parametrize("cut", CUTS)
@pytest.mark.parametrize("stage", STAGES)
def test_truncated_packet_then_close(make_daemon: MakeDaemon, stage: str, cut: str) -> None:
    daemon = make_daemon()
    pid, baseline = daemon.pid, warmed_up(daemon)
    abuser = STAGES[stage](daemon)
    try:
        abuser.send_raw(CUTS[cut](NEXT_PACKET[stage]))
        verified_transaction(daemon)  # while the daemon waits for the rest
    finally:
        abuser.close()
    assert_recovered(daemon, pid, baseline)


# ---------------------------------------------------------------- commands out of order

# Without a client address there is nothing to evaluate: the daemon defers
# the mail and says so loudly, since a real MTA that does this is broken.
# For a client that never sent SMFIC_CONNECT that one log line is the
# expected outcome, not a fault.
NO_CLIENT_ADDRESS = (
    r"^ERROR spfmilter\.milter: conn=\d+: the MTA's connect information could not be read "
    r"and it sent no \{client_addr\}; transaction tempfailed$",
)

# Commands an MTA never sends in this order, and the log lines each may
# legitimately cause.  libmilter ignores some and answers others; none may
# make the daemon log a traceback or crash.
OUT_OF_ORDER: dict[str, tuple[bytes, tuple[str, ...]]] = {
    "helo-before-negotiation": (
        frame(SMFIC_HELO, b"helo-pass.example.org\0"),
        NO_CLIENT_ADDRESS,
    ),
    "unknown-smtp-command-before-negotiation": (
        frame(SMFIC_UNKNOWN, b"VRFY root\0"),
        NO_CLIENT_ADDRESS,
    ),
    "rcpt-and-eom-before-mail": (
        optneg()
        + connect_packet(PASS_IP)
        + frame(SMFIC_HELO, b"helo-pass.example.org\0")
        + frame(SMFIC_RCPT, b"<user@example.net>\0")
        + frame(SMFIC_BODYEOB),
        (),
    ),
    "negotiation-twice": (optneg() + optneg(), ()),
}


@pytest.mark.parametrize("case", OUT_OF_ORDER)
def test_commands_out_of_order(make_daemon: MakeDaemon, case: str) -> None:
    packets, allowed = OUT_OF_ORDER[case]
    daemon = make_daemon(allowed=allowed)
    pid, baseline = daemon.pid, warmed_up(daemon)
    abuser = fresh(daemon)
    try:
        abuser.send_raw(packets)
        verified_transaction(daemon)
    finally:
        abuser.close()
    # The fixture's log check at the end catches a traceback from any of
    # these commands: the daemon has closed the connection by then.
    assert_recovered(daemon, pid, baseline)


@pytest.mark.parametrize("negotiate", [False, True], ids=["before-negotiation", "after-it"])
def test_mail_without_connect_information_is_deferred(
    make_daemon: MakeDaemon, negotiate: bool
) -> None:
    daemon = make_daemon(allowed=NO_CLIENT_ADDRESS)
    pid, baseline = daemon.pid, warmed_up(daemon)
    abuser = negotiated(daemon) if negotiate else fresh(daemon)
    try:
        abuser.send_raw(frame(SMFIC_MAIL, f"<{PASS_SENDER}>\0".encode()))
        reply = abuser.read_response("MAIL without CONNECT")
        verified_transaction(daemon)
    finally:
        abuser.close()
    # Never let through unchecked: the MTA must defer (4xx), not go on.
    deferred = reply.kind == "replycode" and (reply.code or "").startswith("4")
    assert reply.kind == "tempfail" or deferred, reply
    assert_recovered(daemon, pid, baseline)


# ---------------------------------------------------------------- stalled clients

# Where a stalled client stops: how far it gets with answers, then the
# partial packet it leaves the daemon waiting on.
STALLS: dict[str, tuple[Callable[[Daemon], MilterClient], bytes]] = {
    "idle": (fresh, b""),
    "inside-length": (fresh, optneg()[:2]),
    "inside-connect": (negotiated, NEXT_PACKET["negotiated"][:9]),
    "inside-rcpt": (in_transaction, NEXT_PACKET["in-transaction"][:9]),
}


def stalled(daemon: Daemon, kind: str) -> MilterClient:
    reach, partial = STALLS[kind]
    client = reach(daemon)
    client.send_raw(partial)
    return client


@pytest.mark.xfail(
    strict=True,
    raises=MilterError,
    reason="Debian's libmilter serves connections from a pool of worker threads; a "
    "client that stops inside a packet holds a worker for libmilter's timeout, and "
    "after a few of them a new connection waits (seen with every libmilter milter). "
    "spfmilter's defence is that only the MTA can reach its socket "
    "(test_local_user.py::test_other_users_cannot_reach_the_default_socket); this "
    "test says so when libmilter changes.",
)
def test_stalled_clients_do_not_hold_up_others(make_daemon: MakeDaemon) -> None:
    # One process: one libmilter and its one pool of worker threads, which is
    # what this test is about (with several, a transaction may land on a
    # process whose pool the stalls happen to have spared, now and then).
    daemon = make_daemon({"milter": {"workers": "1"}})
    pid, baseline = daemon.pid, warmed_up(daemon)
    # A stall at the very start of a connection is the hardest case for a
    # pool of workers (one is busy with the partial packet from the moment
    # the connection is accepted), so it comes up most often.
    kinds = ["inside-length", "idle", "inside-length", "inside-connect"]
    kinds += ["inside-length", "inside-rcpt"]
    rounds = 10
    held: list[MilterClient] = []
    try:
        # Each stall is followed at once by a normal transaction on a new
        # connection: the daemon is then busy taking the stalled packet
        # when the newcomer arrives, and must still serve it.
        for _ in range(rounds):
            for kind in kinds:
                held.append(stalled(daemon, kind))
                verified_transaction(daemon)
        # Every stalled connection was accepted and is still held open, so
        # the stalls are real while the normal transactions run.
        now = daemon.stats()
        assert now.fds >= baseline.fds + len(held), (baseline, now)
        for _ in range(3):
            verified_transaction(daemon)
    finally:
        for client in held:
            client.close()
    assert_recovered(daemon, pid, baseline)


# ---------------------------------------------------------------- connection churn


@dataclass(frozen=True)
class Drop:
    """How one abusive connection gets as far as it goes, then hangs up.

    The partial packet goes out only as the connection is dropped: a client
    that keeps one pending is test_stalled_clients_do_not_hold_up_others.
    """

    reach: Callable[[Daemon], MilterClient]
    partial: bytes  # sent just before hanging up
    reset: bool  # abortive close (RST) instead of an orderly one


DROPS = (
    Drop(fresh, b"", reset=True),
    Drop(negotiated, b"", reset=False),
    Drop(in_transaction, b"", reset=True),
    Drop(negotiated, NEXT_PACKET["negotiated"][:9], reset=False),
    Drop(fresh, optneg()[:2], reset=True),
    Drop(in_transaction, NEXT_PACKET["in-transaction"][:9], reset=False),
)


def test_a_thousand_connections_opened_and_dropped(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    pid, baseline = daemon.pid, warmed_up(daemon)
    total, batch = 1000, 100
    opened = 0
    while opened < total:
        held: list[tuple[MilterClient, Drop]] = []
        try:
            for index in range(opened, min(opened + batch, total)):
                drop = DROPS[index % len(DROPS)]
                held.append((drop.reach(daemon), drop))
            verified_transaction(daemon)  # with a whole batch held open
        finally:
            for client, drop in held:
                if drop.partial:
                    client.send_raw(drop.partial)
                client.close(reset=drop.reset)
        opened += len(held)
    assert opened == total
    assert_recovered(daemon, pid, baseline)


# ---------------------------------------------------------------- crash safety

INFLIGHT_DOMAIN = "inflight.example"
# Postfix's own account of the crash, one line per way it meets a dead
# milter: a command in flight when the daemon died, the end of a message
# whose milter connection died meanwhile, and sessions opened while the
# daemon was down.  Each is the expected evidence of the kill, not a fault.
CRASH_WARNINGS = (
    r"warning: milter inet:127\.0\.0\.1:\d+: can't read SMFIC_\w+ reply packet header",
    r"warning: connect to Milter service inet:127\.0\.0\.1:\d+: Connection refused",
)


@pytest.fixture
def crash_dns() -> Iterator[DNSTestServer]:
    """The core test zone plus names below inflight.example that never answer,
    on a server of its own: the test later makes them answer (DNS recovered)."""
    zone = load_zone_file(ZONES / "core.yaml")
    zone[f"*.{INFLIGHT_DOMAIN}"] = ["TIMEOUT"]
    with DNSTestServer(zone, ttl=60) as server:
        yield server


@dataclass
class Attempt:
    """One SMTP transaction that may be cut short: what each step got back."""

    sender: str
    marker: str
    replies: list[tuple[str, int]]

    def refused(self) -> tuple[str, int] | None:
        """The first step Postfix refused, if any."""
        return next(((step, code) for step, code in self.replies if code >= 400), None)


def smtp_step(attempt: Attempt, step: str, call: Callable[[], tuple[int, bytes]]) -> bool:
    """Record one step's reply code; False once Postfix refused something."""
    try:
        code, _ = call()
    except smtplib.SMTPResponseException as refusal:
        code = refusal.smtp_code
    attempt.replies.append((step, code))
    return code < 400


def message(sender: str, marker: str) -> str:
    return f"Message-ID: {marker}\r\nFrom: {sender}\r\nSubject: crash test\r\n\r\nhi\r\n"


def full_attempt(postfix: PrivatePostfix, sender: str) -> Attempt:
    """Connect, MAIL, RCPT, DATA on a new session, stopping at the first refusal."""
    attempt = Attempt(sender, f"<{uuid.uuid4()}@test.example>", [])
    try:
        smtp = postfix.connect(PASS_IP, PASS_HELO)
    except smtplib.SMTPResponseException as refusal:
        attempt.replies.append(("connect", refusal.smtp_code))
        return attempt
    try:
        if smtp_step(attempt, "mail", lambda: smtp.mail(sender)) and smtp_step(
            attempt, "rcpt", lambda: smtp.rcpt(RCPT)
        ):
            smtp_step(attempt, "data", lambda: smtp.data(message(sender, attempt.marker)))
    finally:
        smtp.close()
    return attempt


def maildir_files(postfix: PrivatePostfix) -> list[bytes]:
    """Every file in the Maildir (new, cur and tmp), as bytes."""
    return [
        path.read_bytes()
        for sub in ("new", "cur", "tmp")
        for path in sorted((postfix.maildir / sub).iterdir())
    ]


def queued_files(postfix: PrivatePostfix) -> list[Path]:
    """Messages still in Postfix's queue, in any state."""
    queues = ("maildrop", "incoming", "active", "deferred", "hold", "corrupt")
    return [
        path
        for name in queues
        if (postfix.queue_dir / name).is_dir()
        for path in (postfix.queue_dir / name).rglob("*")
        if path.is_file()
    ]


def test_sigkill_with_transactions_in_flight(crash_dns: DNSTestServer) -> None:
    # A callback waiting on DNS that never answers waits 20 s (under
    # Postfix's 30 s milter_command_timeout): long enough to be killed in.
    config = config_text(crash_dns, {"dns": {"timeout": "20", "lookup_time": "20"}})
    with postfix_stack(config, postfix_allowed=CRASH_WARNINGS) as stack:
        daemon, postfix = stack.daemon, stack.postfix
        pid = daemon.pid
        verified_transaction(daemon)

        # A session that got past RCPT while the daemon was alive: its
        # message reaches end of data only after the kill.
        past_rcpt = Attempt(PASS_SENDER, f"<{uuid.uuid4()}@test.example>", [])
        smtp = postfix.connect(PASS_IP, PASS_HELO)
        assert smtp_step(past_rcpt, "mail", lambda: smtp.mail(PASS_SENDER))
        assert smtp_step(past_rcpt, "rcpt", lambda: smtp.rcpt(RCPT))

        # Sessions whose MAIL FROM callback waits on DNS that never answers.
        senders = [f"t{n}@h{n}.{INFLIGHT_DOMAIN}" for n in range(4)]
        in_flight: dict[str, Attempt] = {}

        def attempt(sender: str) -> None:
            in_flight[sender] = full_attempt(postfix, sender)

        crash_dns.clear_queries()
        threads = [threading.Thread(target=attempt, args=(s,)) for s in senders]
        for thread in threads:
            thread.start()
        try:
            # Each callback has asked DNS for its own domain: all are in flight.
            wanted = {s.split("@")[1] for s in senders}
            wait_for(
                lambda: wanted <= {name for name, _, _ in crash_dns.queries},
                20,
                "every MAIL FROM callback to query DNS",
            )
            daemon.kill()
        finally:
            for thread in threads:
                thread.join(60)
        assert not any(thread.is_alive() for thread in threads)
        assert (
            smtp_step(past_rcpt, "data", lambda: smtp.data(message(PASS_SENDER, past_rcpt.marker)))
            is False
        )
        smtp.close()

        # A session opened while the daemon is down.
        while_down = full_attempt(postfix, PASS_SENDER)

        cut_short = [*in_flight.values(), past_rcpt, while_down]
        for cut in cut_short:
            refused = cut.refused()
            assert refused is not None and 400 <= refused[1] < 500, (cut.sender, cut.replies)
        assert [r for r in in_flight.values() if r.refused() != ("mail", 451)] == []

        # Restart on the same socket; DNS answers again.
        daemon.start()
        assert daemon.pid != pid
        recovered = load_zone_file(ZONES / "core.yaml")
        recovered[f"*.{INFLIGHT_DOMAIN}"] = [{"TXT": "v=spf1 ip4:198.51.100.0/24 -all"}]
        crash_dns.set_zone(recovered)

        again = [full_attempt(postfix, cut.sender) for cut in cut_short]
        for retry in again:
            assert [code for _, code in retry.replies] == [250, 250, 250], retry
            delivered = postfix.wait_for_message(retry.marker)
            headers = [" ".join(v.split()) for v in delivered.get_all("Received-SPF") or []]
            domain = retry.sender.split("@")[1]
            assert len(headers) == 1, headers
            assert headers[0].startswith(f"pass ({domain}: {PASS_IP} is authorized")
            assert f'envelope-from="{retry.sender}"' in headers[0]

        # Nothing of the cut-short transactions was delivered or kept: the
        # Maildir holds exactly the retries, and the queue drains to empty.
        wait_for(lambda: queued_files(postfix) == [], 20, "Postfix's queue to drain")
        stored = maildir_files(postfix)
        assert len(stored) == len(again)
        for cut in cut_short:
            assert not any(cut.marker.encode() in raw for raw in stored), cut
