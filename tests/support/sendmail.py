"""A private, throwaway Sendmail on loopback for milter integration tests.

This module owns everything needed to put a real Sendmail in front of the
milter under test on a machine where Sendmail cannot be installed (Debian's
``sendmail-bin`` conflicts with the ``postfix`` package the suite also needs):

* :func:`ensure_sendmail` fetches Debian's Sendmail packages with
  ``apt-get download`` and unpacks them into a cache directory with
  ``dpkg -x``; nothing is installed on the system.
* :class:`PrivateSendmail` builds a ``sendmail.cf`` from the packaged m4 files
  and runs one queue-only daemon on 127.0.0.1 with every file it reads or
  writes under its work directory; it starts and stops that one process and
  nothing else.
* :meth:`PrivateSendmail.send` speaks SMTP to it from a chosen 127.0.0.0/8
  address (Sendmail has no XCLIENT, so each test client gets its own loopback
  address) and :meth:`PrivateSendmail.queued_messages` reads the queue back.

Sendmail resolves its own name and every client's address with the C library,
which would send DNS queries to the machine's resolver.  The daemon therefore
runs in a private mount namespace (``unshare --mount``) in which
``/etc/nsswitch.conf``, ``/etc/hosts`` and ``/etc/resolv.conf`` are replaced by
files from the work directory, so no lookup leaves 127.0.0.0/8.  The same
namespace swaps ``/dev`` for a minimal copy whose ``/dev/log`` is a socket read
by this module: Sendmail logs only to syslog, and that log is the one place
milter errors show up.

Needs root (daemon mode and mount namespaces), ``m4``, util-linux's
``unshare`` and ``mount``, and apt package lists (``apt-get update``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import shutil
import smtplib
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from testkit import processes
from testkit.net import free_port, tcp_listening

# sendmail-bin holds the daemon; sendmail-cf the m4 files the .cf is built
# from; libwrap0 the one shared library of the daemon that a machine with
# Postfix lacks (``ldd`` is re-checked after unpacking).
PACKAGES = ("sendmail-bin", "sendmail-cf", "libwrap0")

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
POLL_INTERVAL = 0.05
# Above the milter's 60 s reply timeout, so a slow milter shows up as a
# Sendmail reply rather than as a client-side timeout.
SMTP_TIMEOUT = 90.0
LOG_TAIL_LINES = 40

# Device nodes Sendmail (and the TLS/SASL libraries it loads) open; the
# private /dev holds only these and the syslog socket.
_DEV_NODES = ("null", "zero", "random", "urandom")
# Sendmail stores macro references such as $g in queue files as this byte
# followed by the macro name.
_MACRO_BYTE = b"\x81"
# Header records read H?flags?Name: value; the flags say for which mailers
# the header is emitted and do not belong to the header.
_HEADER_FLAGS = re.compile(r"^\?[^?]*\?")
_QUEUE_ID = re.compile(r"^\d\.\d\.\d+ (\S+) Message accepted")
_SYSLOG_PRIORITY = re.compile(rb"^<\d+>")


class SendmailError(RuntimeError):
    """Sendmail could not be fetched, configured or started."""


@dataclass(frozen=True)
class SendmailInstall:
    """Debian's Sendmail unpacked under ``root`` (see :func:`ensure_sendmail`)."""

    root: Path

    @property
    def binary(self) -> Path:
        return self.root / "usr/libexec/sendmail/sendmail"

    @property
    def cf_dir(self) -> Path:
        return self.root / "usr/share/sendmail/cf"

    @property
    def library_path(self) -> str:
        """LD_LIBRARY_PATH value that finds the unpacked shared libraries."""
        return ":".join(str(path) for path in sorted(self.root.glob("usr/lib/*-linux-gnu*")))


def ensure_sendmail(cache_dir: Path) -> SendmailInstall:
    """Download and unpack Sendmail into ``cache_dir`` unless already done.

    The tree is marked complete only after it is known to run, so an
    interrupted earlier attempt is wiped and redone rather than trusted.
    """
    cache_dir = cache_dir.resolve()
    install = SendmailInstall(cache_dir / "root")
    marker = install.root / ".complete"
    if marker.is_file():
        return install
    debs = cache_dir / "debs"
    shutil.rmtree(install.root, ignore_errors=True)
    shutil.rmtree(debs, ignore_errors=True)
    debs.mkdir(parents=True)
    _run_checked(
        ["apt-get", "download", *PACKAGES],
        cwd=debs,
        what="apt-get download (have the package lists been fetched with apt-get update?)",
    )
    for deb in sorted(debs.glob("*.deb")):
        _run_checked(["dpkg", "-x", str(deb), str(install.root)], cwd=debs, what=f"dpkg -x {deb}")
    # The packaged binary is setgid mail, and the dynamic loader ignores
    # LD_LIBRARY_PATH for set-id programs, which would hide the unpacked
    # libwrap.  Running as root, Sendmail needs no set-id bit.
    install.binary.chmod(0o755)
    _check_libraries(install)
    marker.touch()
    return install


def _run_checked(argv: list[str], *, cwd: Path, what: str) -> None:
    try:
        processes.run(argv, cwd=cwd, what=what, timeout=600)
    except processes.CommandFailed as failed:
        raise SendmailError(str(failed)) from None


def _check_libraries(install: SendmailInstall) -> None:
    proc = subprocess.run(
        ["ldd", str(install.binary)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "LD_LIBRARY_PATH": install.library_path},
    )
    missing = [line.strip() for line in proc.stdout.splitlines() if "not found" in line]
    if missing:
        raise SendmailError(
            f"{install.binary} cannot be loaded; add the packages providing these "
            "libraries to PACKAGES:\n" + "\n".join(missing)
        )
    if proc.returncode != 0:
        raise SendmailError(f"ldd {install.binary} failed:\n{proc.stderr}")


@dataclass(frozen=True)
class SmtpReply:
    code: int
    text: str


@dataclass
class SendResult:
    """Replies to each stage of one SMTP transaction.

    A stage is None (``rcpts`` empty) when an earlier stage was refused and
    the client therefore never reached it.
    """

    connect: SmtpReply
    helo: SmtpReply | None = None
    mail: SmtpReply | None = None
    rcpts: list[SmtpReply] = field(default_factory=list)
    data: SmtpReply | None = None

    @property
    def queue_id(self) -> str | None:
        """Sendmail's queue ID from the final 250 reply, if the message was accepted."""
        if self.data is None or self.data.code != 250:
            return None
        match = _QUEUE_ID.match(self.data.text)
        return match.group(1) if match else None


@dataclass(frozen=True)
class QueuedMessage:
    """One message in the queue, read from its qf (control) and df (body) files.

    ``sender`` and ``recipients`` are envelope addresses without angle
    brackets (the null sender is ``""``).  ``headers`` are in queue order, which
    is the order they will be sent in; folded values keep their line breaks,
    and macro references Sendmail expands at delivery read as ``$x`` (e.g.
    ``Return-Path: <$g>``).  ``macros`` are the values Sendmail saved with the
    message, e.g. ``_`` (client address) and ``s`` (HELO name).  ``body`` is the
    df file: the body only, with Sendmail's LF line ends.
    """

    queue_id: str
    sender: str
    recipients: list[str]
    headers: list[tuple[str, str]]
    macros: dict[str, str]
    body: bytes

    def header_values(self, name: str) -> list[str]:
        """Values of every header called ``name`` (case-insensitive), in order."""
        return [value for key, value in self.headers if key.lower() == name.lower()]


def _strip_angles(address: str) -> str:
    return address[1:-1] if address.startswith("<") and address.endswith(">") else address


def _read_queued(control_file: Path) -> QueuedMessage:
    queue_id = control_file.name[2:]
    raw = control_file.read_bytes().replace(_MACRO_BYTE, b"$")
    records: list[str] = []
    for line in raw.decode("utf-8", "surrogateescape").split("\n"):
        if line == ".":
            break
        if line[:1] in (" ", "\t") and records:
            records[-1] += "\n" + line
        elif line:
            records.append(line)
    sender = ""
    recipients: list[str] = []
    headers: list[tuple[str, str]] = []
    macros: dict[str, str] = {}
    for record in records:
        kind, rest = record[0], record[1:]
        if kind == "S":
            sender = _strip_angles(rest)
        elif kind == "R":
            # R<flags>:<address>
            recipients.append(_strip_angles(rest.partition(":")[2]))
        elif kind == "H":
            name, _, value = _HEADER_FLAGS.sub("", rest, count=1).partition(":")
            headers.append((name, value.lstrip(" ")))
        elif kind == "$":
            # ${long_name}value or $Xvalue
            end = rest.index("}") + 1 if rest.startswith("{") else 1
            macros[rest[:end]] = rest[end:]
    body = control_file.with_name("df" + queue_id).read_bytes()
    return QueuedMessage(queue_id, sender, recipients, headers, macros, body)


class _SyslogSink:
    """Receives the daemon's syslog datagrams and appends them to a file.

    A thread drains the socket continuously: with nobody reading, the socket
    buffer would fill and Sendmail would block in syslog().
    """

    def __init__(self, socket_path: Path, log_path: Path) -> None:
        self._socket_path = socket_path
        self._log_path = log_path
        # Left over if an earlier run of this instance did not close() it.
        socket_path.unlink(missing_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        # Bind through a directory descriptor: a deep pytest work directory
        # can exceed the 108-byte limit on Unix socket paths.
        dir_fd = os.open(socket_path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self._sock.bind(f"/proc/self/fd/{dir_fd}/{socket_path.name}")
        finally:
            os.close(dir_fd)
        self._sock.settimeout(POLL_INTERVAL)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="sendmail-syslog", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        with self._log_path.open("ab") as log:
            while True:
                try:
                    datagram = self._sock.recv(65536)
                except TimeoutError:
                    # Leave only once the socket is empty after close() asked.
                    if self._closing.is_set():
                        return
                    continue
                log.write(_SYSLOG_PRIORITY.sub(b"", datagram).rstrip(b"\n") + b"\n")
                log.flush()

    def close(self) -> None:
        self._closing.set()
        self._thread.join()
        self._sock.close()
        self._socket_path.unlink(missing_ok=True)


class PrivateSendmail:
    """One Sendmail daemon living entirely under ``workdir``.

    ``milter_spec`` is in libmilter notation (``inet:PORT@127.0.0.1``).  The
    daemon accepts mail for ``relay_domains`` from any client and only queues
    it (DeliveryMode=queueonly, no queue runner), so accepted messages stay in
    :attr:`queue_dir` for :meth:`queued_messages`.  With ``F=T`` an unreachable
    milter makes Sendmail answer 4xx rather than accept unfiltered mail.

    The milter receives Sendmail's default macros, which include ``j`` (at
    connect), ``i`` and ``{auth_authen}`` (at MAIL FROM; empty here as this
    server offers no usable AUTH).
    """

    def __init__(
        self,
        install: SendmailInstall,
        workdir: Path,
        milter_spec: str,
        *,
        myhostname: str = "mx.test.example",
        relay_domains: Sequence[str] = ("example.net",),
    ) -> None:
        self.install = install
        # Paths end up in sendmail.cf and in mount commands: make them absolute.
        self.workdir = workdir.resolve()
        self.milter_spec = milter_spec
        self.myhostname = myhostname
        self.relay_domains = tuple(relay_domains)
        self.smtp_port = free_port()
        self.queue_dir = self.workdir / "queue"
        self.cf_path = self.workdir / "sendmail.cf"
        self.pid_path = self.workdir / "sendmail.pid"
        # What the daemon prints itself: startup and configuration errors.
        self.output_path = self.workdir / "sendmail.out"
        self.syslog_path = self.workdir / "syslog.log"
        self._dev_dir = self.workdir / "dev"
        self._proc: subprocess.Popen[bytes] | None = None
        self._syslog: _SyslogSink | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Configure and launch the daemon; return once its SMTP port listens."""
        if os.geteuid() != 0:
            raise SendmailError("PrivateSendmail needs root (daemon mode, mount namespace)")
        if self._proc is not None:
            raise SendmailError("this PrivateSendmail is already running")
        self._write_files()
        self._syslog = _SyslogSink(self._dev_dir / "log", self.syslog_path)
        try:
            with self.output_path.open("wb") as output:
                self._proc = subprocess.Popen(
                    ["unshare", "--mount", "sh", "-ec", self._launch_script()],
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "LD_LIBRARY_PATH": self.install.library_path},
                )
        except OSError:
            self.stop()
            raise
        failure = self._wait_until_listening(self._proc)
        if failure is not None:
            # A daemon that never came up has nothing to shut down cleanly, and
            # while it retries bind() it does not act on SIGTERM promptly.
            self._proc.kill()
            self.stop()
            raise SendmailError(f"{failure}\n{self._log_tail()}")

    def stop(self) -> None:
        """Terminate the daemon by its PID and wait for it; no-op if not running.

        ``unshare`` and ``sh`` exec in turn, so the Popen PID is Sendmail's own.
        """
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT)
        syslog, self._syslog = self._syslog, None
        if syslog is not None:
            syslog.close()

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

    # -- SMTP client side --------------------------------------------------

    def send(
        self, source_ip: str, helo: str, sender: str, rcpts: list[str], message: bytes
    ) -> SendResult:
        """Run one SMTP transaction from ``source_ip`` and return every reply.

        ``sender`` is the bare address (``""`` or ``"<>"`` for the null
        sender).  ``message`` is sent as is, so use CRLF line ends.  The
        transaction stops at the first refused stage (or when every recipient
        was refused); QUIT is always attempted.
        """
        if not ipaddress.ip_address(source_ip).is_loopback:
            raise ValueError(f"{source_ip} is not a loopback address")
        client = smtplib.SMTP(source_address=(source_ip, 0), timeout=SMTP_TIMEOUT)
        try:
            result = SendResult(connect=_reply(*client.connect("127.0.0.1", self.smtp_port)))
            if result.connect.code != 220:
                return result
            result.helo = _reply(*client.ehlo(helo))
            if result.helo.code != 250:
                return result
            result.mail = _reply(*client.mail(sender))
            if result.mail.code != 250:
                return result
            result.rcpts = [_reply(*client.rcpt(rcpt)) for rcpt in rcpts]
            if not any(reply.code in (250, 251) for reply in result.rcpts):
                return result
            try:
                result.data = _reply(*client.data(message))
            except smtplib.SMTPDataError as refused:
                # Raised when DATA itself is not answered with 354.
                result.data = _reply(refused.smtp_code, refused.smtp_error)
            return result
        finally:
            try:
                client.quit()
            except (smtplib.SMTPServerDisconnected, OSError):
                client.close()

    # -- inspection --------------------------------------------------------

    def queued_messages(self) -> list[QueuedMessage]:
        """Every queued message, oldest first."""
        control_files = sorted(
            self.queue_dir.glob("qf*"), key=lambda path: (path.stat().st_mtime_ns, path.name)
        )
        return [_read_queued(path) for path in control_files]

    def log_text(self) -> str:
        """Sendmail's syslog output so far (milter errors and verdicts land here)."""
        try:
            return self.syslog_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- internals ---------------------------------------------------------

    def _mc_text(self) -> str:
        w = self.workdir
        lines = [
            "divert(-1)",
            # Files Sendmail looks for by default (statistics, helpfile,
            # relay-domains, ...) are then sought here rather than in /etc/mail.
            f"define(`MAIL_SETTINGS_DIR', `{w}/')",
            "divert(0)dnl",
            "OSTYPE(`linux')dnl",
            # $j: with it and the private hosts file Sendmail never tries DNS
            # to qualify its own name (which otherwise stalls startup 60 s).
            f"define(`confDOMAIN_NAME', `{self.myhostname}')dnl",
            f"define(`confHOSTS_FILE', `{w}/hosts')dnl",
            f"define(`confSERVICE_SWITCH_FILE', `{w}/service.switch')dnl",
            f"define(`QUEUE_DIR', `{self.queue_dir}')dnl",
            f"define(`confPID_FILE', `{self.pid_path}')dnl",
            # No aliases: nothing is delivered locally.
            "define(`ALIAS_FILE', `')dnl",
            # Interface probing would add this machine's other addresses
            # (and their names) to the local host class.
            "define(`confDONT_PROBE_INTERFACES', `True')dnl",
            # Accepted mail stays in the queue for queued_messages().
            "define(`confDELIVERY_MODE', `queueonly')dnl",
            # No RFC 1413 ident callback to each client.
            "define(`confTO_IDENT', `0s')dnl",
            # A busy CI machine must not make Sendmail refuse connections.
            "define(`confREFUSE_LA', `999')dnl",
            "define(`confQUEUE_LA', `999')dnl",
            # Verbose enough to log milter connections, errors and verdicts.
            "define(`confLOG_LEVEL', `12')dnl",
            # Otherwise Sendmail also listens on port 587 on all interfaces.
            "FEATURE(`no_default_msa')dnl",
            # M=A: no AUTH, which would need a SASL setup outside workdir.
            f"DAEMON_OPTIONS(`Port={self.smtp_port}, Addr=127.0.0.1, Name=MTA, M=A')dnl",
            # Take addresses as given: no host lookups while parsing them.
            "FEATURE(`nocanonify')dnl",
            # Without DNS every sender domain is unresolvable; Sendmail must not
            # refuse MAIL FROM before the milter gets to judge it.  Likewise
            # let unqualified senders reach the milter, as Postfix does.
            "FEATURE(`accept_unresolvable_domains')dnl",
            "FEATURE(`accept_unqualified_senders')dnl",
            *(f"RELAY_DOMAIN(`{domain}')dnl" for domain in self.relay_domains),
            # F=T: tempfail when the milter is unreachable, never skip it.
            f"INPUT_MAIL_FILTER(`spfmilter', `S={self.milter_spec}, F=T, T=S:30s;R:60s')dnl",
            "MAILER(`local')dnl",
            "MAILER(`smtp')dnl",
        ]
        return "\n".join(lines) + "\n"

    def _write_files(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Sendmail refuses a queue directory others can write to.
        self.queue_dir.mkdir(mode=0o700, exist_ok=True)
        # The machine's own name must resolve too: Sendmail starts by looking
        # up gethostname() with the C library.
        names = dict.fromkeys([self.myhostname, socket.gethostname(), "localhost"])
        (self.workdir / "hosts").write_text(f"127.0.0.1\t{' '.join(names)}\n")
        # Sendmail's own switch and the C library's both: hosts from files only.
        (self.workdir / "service.switch").write_text("hosts\tfiles\n")
        (self.workdir / "nsswitch.conf").write_text(
            "passwd: files\ngroup: files\nshadow: files\nhosts: files\n"
            "networks: files\nprotocols: files\nservices: files\n"
        )
        # Sendmail also calls the resolver directly in places; anything that
        # slips through goes to 127.0.0.1, where nothing answers.
        (self.workdir / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        self._dev_dir.mkdir(exist_ok=True)
        for node in _DEV_NODES:
            (self._dev_dir / node).touch()  # mount points for the real nodes
        mc_path = self.workdir / "sendmail.mc"
        mc_path.write_text(self._mc_text())
        try:
            cf = processes.run(
                [
                    "m4",
                    f"-D_CF_DIR_={self.install.cf_dir}/",
                    self.install.cf_dir / "m4/cf.m4",
                    mc_path,
                ],
                what=f"m4 building {self.cf_path}",
            )
        except processes.CommandFailed as failed:
            raise SendmailError(str(failed)) from None
        self.cf_path.write_text(cf.stdout)

    def _launch_script(self) -> str:
        """Shell commands run inside the new mount namespace.

        ``unshare`` makes the namespace's mounts private, so none of them is
        visible outside it, and they vanish with the daemon.
        """
        w = self.workdir
        binds = [
            (w / "nsswitch.conf", Path("/etc/nsswitch.conf")),
            (w / "hosts", Path("/etc/hosts")),
            (w / "resolv.conf", Path("/etc/resolv.conf")),
            *((Path("/dev") / node, self._dev_dir / node) for node in _DEV_NODES),
        ]
        commands = [shlex.join(["mount", "--bind", str(src), str(dst)]) for src, dst in binds]
        commands.append(shlex.join(["mount", "--rbind", str(self._dev_dir), "/dev"]))
        # -bD: daemon in the foreground, so the PID stays this process's.
        sendmail = [str(self.install.binary), "-bD", "-C", str(self.cf_path)]
        commands.append("exec " + shlex.join(sendmail))
        return "\n".join(commands)

    def _wait_until_listening(self, proc: subprocess.Popen[bytes]) -> str | None:
        """Poll until ready; return None, or why the daemon is not coming up.

        Readiness is read from Sendmail's PID file, which it writes only after
        binding its socket, and from the kernel's socket table, instead of
        probing with a connection: a probe would be an SMTP session that
        reaches the milter.
        """
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            status = proc.poll()
            if status is not None:
                return f"sendmail exited with status {status} before listening"
            if self._pid_file_is(proc.pid) and self._port_listening():
                return None
            time.sleep(POLL_INTERVAL)
        return f"sendmail did not listen on 127.0.0.1:{self.smtp_port} within {START_TIMEOUT} s"

    def _pid_file_is(self, pid: int) -> bool:
        # First line: the PID; second line: the command line.
        try:
            return self.pid_path.read_text().split("\n", 1)[0] == str(pid)
        except FileNotFoundError:
            return False

    def _port_listening(self) -> bool:
        return tcp_listening(self.smtp_port)

    def _log_tail(self) -> str:
        parts = []
        for path in (self.output_path, self.syslog_path):
            try:
                lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            except FileNotFoundError:
                lines = ["(missing)"]
            parts.append(f"--- last lines of {path} ---\n" + "\n".join(lines))
        return "\n".join(parts)


def _reply(code: int, text: bytes | str) -> SmtpReply:
    # smtplib hands replies over as bytes, except in some of its exceptions.
    return SmtpReply(code, text if isinstance(text, str) else text.decode("utf-8", "replace"))
