"""The real downstream consumers of spfmilter's headers, run for tests.

This module owns what it takes to hand spfmilter's Received-SPF and
Authentication-Results headers to the programs that act on them, as Debian 12
ships them:

* :func:`start_port53_dns` serves test zone data on port 53 of a loopback
  address of its own, because the C library resolver (and Perl's Net::DNS,
  reading the same ``/etc/resolv.conf``) knows no other port.
* :func:`private_resolver_command` wraps a command so that it runs in a
  private mount namespace (``unshare --mount``) whose ``/etc/resolv.conf``
  names that server and whose ``/etc/nsswitch.conf`` and ``/etc/hosts``
  resolve host names from the machine's own name and that server only: no
  query leaves 127.0.0.0/8, whatever the machine's own resolver set-up.
* :class:`PrivateOpenDMARC` runs one OpenDMARC milter in the foreground with
  a configuration file in its work directory, reads its syslog through a
  private ``/dev/log`` and its history file, and stops exactly the process it
  started, by PID.
* :class:`SpamAssassin` runs the ``spamassassin`` command on one delivered
  message, or once on a whole mailbox of them, in such a namespace and with
  a private site configuration and home directory, and reports which SPF
  rules hit and which header each SPF result came from.

Needs root (port 53, mount namespaces), util-linux ``unshare`` and ``mount``
and the Debian packages ``opendmarc`` and ``spamassassin``; a missing program
is an error that says which package to install, never a skip.  It must not
import spfmilter: it only reads what spfmilter wrote.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import errno
import mailbox
import os
import pwd
import random
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from types import TracebackType
from typing import Self

from testkit.dnsserver import DNSTestServer, ZoneData
from testkit.net import tcp_listening

OPENDMARC = Path("/usr/sbin/opendmarc")
SPAMASSASSIN = Path("/usr/bin/spamassassin")
# The publicsuffix package (a dependency of opendmarc): organizational
# domains for relaxed alignment (RFC 7489 section 3.2).
PUBLIC_SUFFIX_LIST = Path("/usr/share/publicsuffix/public_suffix_list.dat")
# SpamAssassin's rules as packaged; rules fetched by sa-update into
# /var/lib/spamassassin would otherwise take precedence when present.
SPAMASSASSIN_RULES = Path("/usr/share/spamassassin")

DNS_PORT = 53
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
COMMAND_TIMEOUT = 60.0
# SpamAssassin takes some 30 ms a message on these machines, when not busy.
MBOX_MESSAGE_TIMEOUT = 0.5
POLL_INTERVAL = 0.02
LOG_TAIL_LINES = 40

_DNS_ADDRESS_ATTEMPTS = 20
# Device nodes the consumers (and the C library) open; the private /dev of
# OpenDMARC's namespace holds only these and the syslog socket.
_DEV_NODES = ("null", "zero", "random", "urandom")
# syslog(3) datagrams start with "<PRI>", PRI = facility * 8 + severity.
_SYSLOG_PRI = re.compile(rb"^<(\d{1,3})>")
_SEVERITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
_WARNING = _SEVERITIES.index("warning")
# ARES_RESULT_* of OpenDMARC's opendmarc-ar.h, as its history file writes
# them in "spf N" lines.
_ARES_RESULTS = {
    -1: "undefined",
    0: "pass",
    2: "softfail",
    3: "neutral",
    4: "temperror",
    5: "permerror",
    6: "none",
    7: "fail",
}
# DMARC_POLICY_SPF_ALIGNMENT_* of libopendmarc's dmarc.h ("align_spf N").
_ALIGNMENT = {4: "pass", 5: "fail"}
# SpamAssassin's SPF plugin says where it took a result from, at -D spf:
# "spf: re-using mfrom result from Received-SPF header: pass".
_SA_REUSE = re.compile(
    r"\bdbg: spf: re-using (mfrom|helo) result from (Received-SPF|Authentication-Results)"
    r" header: (\w+)$"
)
# Its -D output: "Dec  2 00:54:47.682 [16472] dbg: spf: ..."; any other line
# on stderr is a warning or an error.
_SA_DEBUG = "] dbg: "
# The AuthRes plugin, told of a field that does not start with a token,
# reads past its end (pos() is unset): Perl warns, the field is skipped.
_SA_AUTHRES_WARNING = re.compile(
    r"\] warn: Use of uninitialized value in substr at \S+/Plugin/AuthRes\.pm line \d+\.$"
)
# Rules of the AuthRes set-up: a pass taken from a trusted authserv-id.
AUTHRES_SPF_PASS = "T_AUTHRES_SPF_PASS"
AUTHRES_DKIM_PASS = "T_AUTHRES_DKIM_PASS"


class ConsumerMissing(RuntimeError):
    """A consumer program is not installed."""


def require(program: Path, package: str) -> None:
    """Fail clearly, naming the package, when `program` is not installed."""
    if not os.access(program, os.X_OK):
        raise ConsumerMissing(
            f"{program} is missing: apt-get install {package} "
            "(bash scripts/quickstart.sh test installs it)"
        )


# ---------------------------------------------------------------- DNS


def start_port53_dns(zone: ZoneData, *, ttl: int = 60) -> DNSTestServer:
    """A started DNSTestServer on port 53 of a free 127.53.0.0/16 address.

    Addresses are drawn at random so that parallel test runs (and anything
    else listening on some loopback port 53) do not collide; the caller
    stops the server.
    """
    for _ in range(_DNS_ADDRESS_ATTEMPTS):
        host = f"127.53.{random.randrange(256)}.{random.randrange(1, 255)}"
        server = DNSTestServer(zone, host=host, port=DNS_PORT, ttl=ttl)
        try:
            server.start()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                continue
            raise
        return server
    raise RuntimeError(f"port 53 was taken on {_DNS_ADDRESS_ATTEMPTS} addresses in 127.53.0.0/16")


_RESOLVER_FILES = ("resolv.conf", "nsswitch.conf", "hosts")


def write_resolver_files(directory: Path, nameserver: str) -> None:
    """The /etc files of a private resolver: resolv.conf naming only
    `nameserver` (an IPv4 loopback address), an nsswitch.conf that resolves
    host names from files and DNS only, and a hosts file with the machine's
    own name.

    The NSS part matters on machines with systemd-resolved or mDNS modules in
    /etc/nsswitch.conf: those would send lookups past resolv.conf.  The hosts
    file answers the programs' look-up of their own host name (SpamAssassin
    makes one), which would otherwise be a DNS query wherever /etc/hosts lacks
    that name.
    """
    if not nameserver.startswith("127."):
        raise ValueError(f"{nameserver} is not in 127.0.0.0/8")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "resolv.conf").write_text(f"nameserver {nameserver}\noptions attempts:1\n")
    (directory / "nsswitch.conf").write_text(
        "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"
        "networks: files\nprotocols: files\nservices: files\n"
    )
    names = " ".join(dict.fromkeys(["localhost", socket.gethostname()]))
    (directory / "hosts").write_text(f"127.0.0.1\t{names}\n::1\tlocalhost\n")


def private_resolver_command(
    argv: Sequence[str],
    resolver_dir: Path,
    *,
    dev_dir: Path | None = None,
    binds: Sequence[tuple[Path, Path]] = (),
) -> list[str]:
    """`argv` run in a new mount namespace with the files of
    :func:`write_resolver_files` from `resolver_dir` in /etc, with `dev_dir`
    (if given) as its /dev, holding the usual device nodes, and with each
    (source, target) of `binds` bind-mounted.

    The shell execs `argv`, so the PID of the returned command is the
    program's own.  The namespace's mounts are private (unshare's default
    propagation) and vanish with the program.
    """
    mounts = [
        *((resolver_dir / name, Path("/etc") / name) for name in _RESOLVER_FILES),
        *binds,
    ]
    if dev_dir is not None:
        dev_dir.mkdir(parents=True, exist_ok=True)
        for node in _DEV_NODES:
            (dev_dir / node).touch()  # mount points for the real nodes
            mounts.append((Path("/dev") / node, dev_dir / node))
    script = [shlex.join(["mount", "--bind", str(src), str(dst)]) for src, dst in mounts]
    if dev_dir is not None:
        script.append(shlex.join(["mount", "--rbind", str(dev_dir), "/dev"]))
    script.append("exec " + shlex.join(argv))
    return ["unshare", "--mount", "sh", "-ec", "\n".join(script)]


# ---------------------------------------------------------------- syslog


class _SyslogSocket:
    """A /dev/log stand-in: receives syslog(3) datagrams into a text file.

    Each line reads "SEVERITY MESSAGE", e.g. "info opendmarc[42]: ...".  A
    thread drains the socket continuously, since a full socket buffer would
    block the logging program.
    """

    def __init__(self, socket_path: Path, log_path: Path) -> None:
        self._socket_path = socket_path
        self._log_path = log_path
        socket_path.unlink(missing_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        # Bound through a directory descriptor: a long work directory could
        # exceed the 108-byte limit of a socket path.
        dir_fd = os.open(socket_path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self._sock.bind(f"/proc/self/fd/{dir_fd}/{socket_path.name}")
        finally:
            os.close(dir_fd)
        self._sock.settimeout(POLL_INTERVAL)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="syslog-socket", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        with self._log_path.open("a", encoding="utf-8") as log:
            while True:
                try:
                    datagram = self._sock.recv(65536)
                except TimeoutError:
                    if self._closing.is_set():
                        return
                    continue
                log.write(_syslog_line(datagram) + "\n")
                log.flush()

    def close(self) -> None:
        self._closing.set()
        self._thread.join()
        self._sock.close()
        self._socket_path.unlink(missing_ok=True)


def _syslog_line(datagram: bytes) -> str:
    match = _SYSLOG_PRI.match(datagram)
    severity = "unknown"
    if match:
        severity = _SEVERITIES[int(match.group(1)) & 7]
        datagram = datagram[match.end() :]
    # "Mon DD HH:MM:SS " comes before the tag; the test has its own clock.
    text = datagram.decode("utf-8", "replace").rstrip("\n")
    text = re.sub(r"^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d ", "", text)
    return f"{severity} {text}"


# ---------------------------------------------------------------- OpenDMARC


@dataclass(frozen=True)
class DmarcVerdict:
    """What OpenDMARC wrote into the message: its Authentication-Results."""

    result: str  # pass, fail, none, ...
    header_from: str
    header: str  # the whole field value, unfolded

    @classmethod
    def from_message(cls, message: Message, authserv_id: str) -> DmarcVerdict:
        """The one A-R field `authserv_id` added to `message`."""
        ours = [
            " ".join(value.split())
            for value in message.get_all("Authentication-Results") or []
            if value.strip().split(";", 1)[0].strip() == authserv_id
        ]
        assert len(ours) == 1, f"expected one A-R from {authserv_id}, got {ours}"
        return cls.from_value(ours[0])

    @classmethod
    def from_value(cls, value: str) -> DmarcVerdict:
        """The verdict in the value of OpenDMARC's A-R field."""
        header = " ".join(value.split())
        match = re.search(r"; dmarc=(\w+) .*\bheader\.from=(\S+)$", header)
        assert match is not None, header
        return cls(match.group(1), match.group(2), header)


@dataclass(frozen=True)
class DmarcRecord:
    """One message in OpenDMARC's history file (the input of its aggregate
    reports): every "key value" line, and the SPF facts decoded."""

    fields: Mapping[str, tuple[str, ...]]

    @property
    def spf(self) -> str:
        """The SPF result recorded for the report ("spf N"), the last if several."""
        return _ARES_RESULTS.get(int(self.fields["spf"][-1]), self.fields["spf"][-1])

    @property
    def align_spf(self) -> str:
        """Whether DMARC counted an aligned SPF pass ("align_spf N")."""
        value = self.fields["align_spf"][-1]
        return _ALIGNMENT.get(int(value), value)


def parse_history(text: str) -> dict[str, DmarcRecord]:
    """History file text -> records by job id (the MTA's queue id)."""
    records: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "job":
            current = records.setdefault(value, {})
        if current is not None:
            current.setdefault(key, []).append(value)
    return {
        job: DmarcRecord({key: tuple(values) for key, values in fields.items()})
        for job, fields in records.items()
    }


class PrivateOpenDMARC:
    """One OpenDMARC milter on 127.0.0.1:`port`, living under `workdir`.

    It trusts the Authentication-Results of `trusted_authserv_ids` and the
    SPF results in headers only: it never evaluates SPF itself, never rejects
    and never sends reports.  Its DNS queries go to `nameserver` (port 53).
    With `authserv_id_with_job_id` it writes "authserv-id/job id" and
    trusts fields that carry the message's own job id so.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        port: int,
        nameserver: str,
        authserv_id: str,
        trusted_authserv_ids: Sequence[str],
        authserv_id_with_job_id: bool = False,
    ) -> None:
        self.workdir = workdir.resolve()
        self.port = port
        self.nameserver = nameserver
        self.authserv_id = authserv_id
        self.trusted_authserv_ids = tuple(trusted_authserv_ids)
        self.authserv_id_with_job_id = authserv_id_with_job_id
        self.config_path = self.workdir / "opendmarc.conf"
        self.history_path = self.workdir / "history"
        self.log_path = self.workdir / "syslog.log"
        self.output_path = self.workdir / "opendmarc.out"
        self._dev_dir = self.workdir / "dev"
        self._process: subprocess.Popen[bytes] | None = None
        self._syslog: _SyslogSocket | None = None

    @property
    def postfix_socket(self) -> str:
        """The socket in Postfix notation."""
        return f"inet:127.0.0.1:{self.port}"

    def config_text(self) -> str:
        settings = {
            "Socket": f"inet:{self.port}@127.0.0.1",
            "AuthservID": self.authserv_id,
            "TrustedAuthservIDs": ",".join(self.trusted_authserv_ids),
            "AuthservIDWithJobID": "true" if self.authserv_id_with_job_id else "false",
            # The SPF result must come from spfmilter's header: OpenDMARC
            # must neither ignore it nor evaluate SPF on its own.
            "SPFIgnoreResults": "false",
            "SPFSelfValidate": "false",
            "RejectFailures": "false",
            "FailureReports": "false",
            "HistoryFile": str(self.history_path),
            # Messages from domains without a DMARC record too.
            "RecordAllMessages": "true",
            "PublicSuffixList": str(PUBLIC_SUFFIX_LIST),
            # IgnoreHosts keeps its default, 127.0.0.1: the clients tests pose
            # with XCLIENT are not loopback addresses.
            "Syslog": "true",
            "SyslogFacility": "mail",
            # The PID must stay the one this class started.
            "Background": "false",
            "AutoRestart": "false",
        }
        return "".join(f"{key} {value}\n" for key, value in settings.items())

    def start(self) -> None:
        """Start it and return once its socket listens."""
        require(OPENDMARC, "opendmarc")
        if self._process is not None:
            raise RuntimeError("this PrivateOpenDMARC is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())
        write_resolver_files(self.workdir, self.nameserver)
        self._dev_dir.mkdir(exist_ok=True)
        self._syslog = _SyslogSocket(self._dev_dir / "log", self.log_path)
        argv = [str(OPENDMARC), "-f", "-c", str(self.config_path)]
        command = private_resolver_command(argv, self.workdir, dev_dir=self._dev_dir)
        with self.output_path.open("wb") as output:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT
        # Readiness from the kernel's socket table: a probe connection would
        # be a milter session that OpenDMARC logs as an error.
        while not self._listening():
            status = self._process.poll()
            if status is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"opendmarc did not listen on 127.0.0.1:{self.port} "
                    f"(exit status {status})\n{self._log_tail()}"
                )
            time.sleep(POLL_INTERVAL)
        # unshare and sh exec in turn: the PID stop() signals is OpenDMARC's.
        # Compared by device and inode: in a chroot (fresh-debian) the link
        # names the file by its path outside.
        pid = self._process.pid
        running, installed = os.stat(f"/proc/{pid}/exe"), OPENDMARC.stat()
        if (running.st_dev, running.st_ino) != (installed.st_dev, installed.st_ino):
            self.stop()
            raise RuntimeError(f"process {pid} is not {OPENDMARC}")

    def stop(self) -> int | None:
        """SIGTERM the process this object started and wait for it to exit;
        SIGKILL only if it hangs.  Returns its exit status (None if never
        started)."""
        process, self._process = self._process, None
        status = None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while process.poll() is None and time.monotonic() < deadline:
                # libmilter's listener notices the stop request when it
                # wakes up: at once for a connection, else after 5 s.
                self._wake_listener()
                try:
                    process.wait(POLL_INTERVAL * 5)
                except subprocess.TimeoutExpired:
                    continue
            if process.poll() is None:
                process.kill()
            status = process.wait(STOP_TIMEOUT)
        syslog, self._syslog = self._syslog, None
        if syslog is not None:
            syslog.close()
        return status

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what it concluded -------------------------------------------------

    def verdict(self, message: Message) -> DmarcVerdict:
        return DmarcVerdict.from_message(message, self.authserv_id)

    def record(self, queue_id: str) -> DmarcRecord:
        """The history record of the message Postfix queued as `queue_id`.

        OpenDMARC appends it before it answers the end of the message, so it
        is there once the message is delivered.
        """
        text = self.history_path.read_text() if self.history_path.exists() else ""
        records = parse_history(text)
        assert queue_id in records, f"no history record for job {queue_id}:\n{text}"
        return records[queue_id]

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def unexpected(self, allowed: Sequence[str] = ()) -> list[str]:
        """Log lines of severity warning or worse not matching `allowed`,
        plus anything it printed on stdout or stderr."""
        problems = [
            line
            for line in self.log_text().splitlines()
            if line.split(" ", 1)[0] in (*_SEVERITIES[: _WARNING + 1], "unknown")
            and not any(re.search(pattern, line) for pattern in allowed)
        ]
        if self.output_path.exists():
            problems += self.output_path.read_text(errors="replace").splitlines()
        return problems

    # -- internals -----------------------------------------------------------

    def _listening(self) -> bool:
        return tcp_listening(self.port)

    def _wake_listener(self) -> None:
        with contextlib.suppress(OSError):  # not listening any more
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()

    def _log_tail(self) -> str:
        parts = []
        for path in (self.output_path, self.log_path):
            try:
                lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            except FileNotFoundError:
                lines = ["(missing)"]
            parts.append(f"--- {path} ---\n" + "\n".join(lines))
        return "\n".join(parts)


# ---------------------------------------------------------------- SpamAssassin


@dataclass(frozen=True)
class SpamReport:
    """What SpamAssassin concluded about one message."""

    tests: frozenset[str]  # every rule that hit (X-Spam-Status tests=)
    # (identity, header, result) for each SPF result the SPF plugin took
    # from a header: identity "mfrom" or "helo", header "Received-SPF" or
    # "Authentication-Results".
    reused: tuple[tuple[str, str, str], ...]
    debug: str  # its -D spf output

    @property
    def spf_tests(self) -> frozenset[str]:
        """The SPF rules that hit: SPF_PASS, SPF_HELO_NONE, T_SPF_PERMERROR, ..."""
        return frozenset(t for t in self.tests if re.match(r"^(T_)?SPF_", t))


class SpamAssassin:
    """Runs the spamassassin command on messages, never online.

    The site configuration under `workdir` replaces /etc/spamassassin: it
    loads only the rule engine and the SPF plugin (which is where SPF results
    come from in SpamAssassin 4.0: its rules use the AuthRes plugin only when
    the SPF plugin is not loaded) and says DNS is unavailable.  That keeps
    the network rules, SPF among them, in the score set (``-L`` would drop
    SPF_* altogether) while the SPF plugin can only reuse results from
    headers added by the receiving side, i.e. above the MTA's own Received:
    line.  With `authres_trusted` it also loads the AuthRes plugin as its
    documentation advises for a site whose MTA deletes forged fields: every
    Authentication-Results wherever it sits (``authres_networks all``) of
    those authserv-ids, and the rules AUTHRES_SPF_PASS and AUTHRES_DKIM_PASS
    hit when it took such a pass from one.  The command also runs in a
    private-resolver namespace pointing at `nameserver`, so even a query
    SpamAssassin did make would stay on loopback (and show up in the test DNS
    server's log).  In that namespace the home directory of the user running
    it is a directory under `workdir`: SpamAssassin creates ``.spamassassin``
    in the home of its passwd entry, whatever $HOME or ``-x`` say.
    """

    def __init__(
        self, workdir: Path, *, nameserver: str, authres_trusted: Sequence[str] = ()
    ) -> None:
        self.workdir = workdir.resolve()
        self.site_dir = self.workdir / "site"
        self.home_dir = self.workdir / "home"
        self.nameserver = nameserver
        self.authres_trusted = tuple(authres_trusted)

    def prepare(self) -> None:
        """Write the configuration; check that spamassassin is installed."""
        require(SPAMASSASSIN, "spamassassin")
        home = _passwd_home()
        if self.workdir.is_relative_to(home):
            # The private home would hide the site configuration.
            raise ValueError(f"{self.workdir} is inside {home}; use a work directory elsewhere")
        self.site_dir.mkdir(parents=True, exist_ok=True)
        self.home_dir.mkdir(mode=0o700, exist_ok=True)
        plugins = ["Check", "SPF", *(["AuthRes"] if self.authres_trusted else [])]
        (self.site_dir / "init.pre").write_text(
            "".join(f"loadplugin Mail::SpamAssassin::Plugin::{name}\n" for name in plugins)
        )
        authres = ""
        if self.authres_trusted:
            authres = (
                f"authres_trusted_authserv {' '.join(self.authres_trusted)}\n"
                "authres_networks all\n"
                f"header {AUTHRES_SPF_PASS} eval:check_authres_result('spf', 'pass')\n"
                f"header {AUTHRES_DKIM_PASS} eval:check_authres_result('dkim', 'pass')\n"
            )
        (self.site_dir / "local.cf").write_text(
            "dns_available no\n"
            # Our header sits at the top, the newest of its kind.
            "use_newest_received_spf_header 1\n" + authres
        )
        write_resolver_files(self.workdir, self.nameserver)

    def check(self, raw: bytes) -> SpamReport:
        """Run ``spamassassin -t -D spf`` on the message `raw`."""
        proc = self._run(["--test-mode", "--debug=spf"], raw)
        debug = proc.stderr.decode("utf-8", "replace")
        problems = [line for line in debug.splitlines() if _SA_DEBUG not in line]
        assert problems == [], "\n".join(problems)
        parser = email.parser.BytesParser(policy=email.policy.compat32)
        tests = _hits(parser.parsebytes(proc.stdout))
        reused = tuple(
            (m.group(1), m.group(2), m.group(3))
            for m in map(_SA_REUSE.search, debug.splitlines())
            if m is not None
        )
        return SpamReport(tests, reused, debug)

    def check_many(self, messages: Sequence[bytes]) -> dict[str, frozenset[str]]:
        """Run ``spamassassin --mbox`` once on all of `messages`: the rules
        that hit each, by its Message-ID (which must be unique)."""
        inbox = self.workdir / "input.mbox"
        inbox.unlink(missing_ok=True)
        box = mailbox.mbox(inbox)
        for raw in messages:
            box.add(raw)
        box.close()
        timeout = COMMAND_TIMEOUT + MBOX_MESSAGE_TIMEOUT * len(messages)
        proc = self._run(["--mbox"], inbox.read_bytes(), timeout)
        problems = [
            line
            for line in proc.stderr.decode("utf-8", "replace").splitlines()
            if not _SA_AUTHRES_WARNING.search(line)
        ]
        assert problems == [], "\n".join(problems)
        outbox = self.workdir / "output.mbox"
        outbox.write_bytes(proc.stdout)
        with contextlib.closing(mailbox.mbox(outbox)) as box:
            hits = {message["Message-ID"]: _hits(message) for message in box}
        assert None not in hits, "a message without a Message-ID"
        assert len(hits) == len(messages), f"{len(messages)} messages, {len(hits)} reports"
        return hits

    def _run(
        self, options: Sequence[str], stdin: bytes, timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[bytes]:
        argv = [
            str(SPAMASSASSIN),
            *options,
            "--nocreate-prefs",
            f"--configpath={SPAMASSASSIN_RULES}",
            f"--siteconfigpath={self.site_dir}",
            f"--prefspath={self.workdir / 'user_prefs'}",
        ]
        home = _passwd_home()
        binds = [(self.home_dir, home)] if home.is_dir() else []
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
        proc = subprocess.run(
            private_resolver_command(argv, self.workdir, binds=binds),
            input=stdin,
            capture_output=True,
            env=env,
            timeout=timeout,
            check=False,
        )
        assert proc.returncode == 0, (
            f"spamassassin exited {proc.returncode}:\n{proc.stderr.decode('utf-8', 'replace')}"
        )
        return proc


def _hits(message: Message) -> frozenset[str]:
    """The rules that hit, from the X-Spam-Status field SpamAssassin added."""
    status = message.get("X-Spam-Status", "")
    # The list is folded after its commas.
    match = re.search(r"\btests=(\S*)", re.sub(r",\s+", ",", status))
    assert match is not None, f"no tests= in X-Spam-Status: {status!r}"
    return frozenset(t for t in match.group(1).split(",") if t and t != "none")


def _passwd_home() -> Path:
    return Path(pwd.getpwuid(os.geteuid()).pw_dir)
