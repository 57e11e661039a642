"""Debian's systemd-journald and rsyslogd, run privately, for tests of where
spfmilter's log lines end up when systemd runs it.

This module owns a small logging stack like a Debian 12 host's, built from
the real programs but kept off the machine's own logging: a private mount
namespace; journald in it, socket-activated; a journal stream connected the
way systemd connects a unit's stderr; rsyslogd reading what journald
forwards, with Debian's stock file rules writing to a temp directory; and
reading back the journal (journalctl -o json) and those files.  Everything
is started as a process of its own and stopped by its PID.  It imports
nothing from spfmilter: the daemon is started through testkit.daemon.

Why each piece is set up as it is (systemd 252, rsyslog 8.2302, both Debian
12; found by experiment and in their sources):

- The namespace.  ``unshare --mount --propagation private sleep infinity``
  holds it; the other programs join it with ``nsenter --mount``, which
  execs them, so each PID is the program's own.  A temp directory is bound
  over /run and /dev/null over /dev/kmsg there.  Private propagation keeps
  both mounts out of the host's view, and the namespace ends with its last
  process.  /dev is otherwise the host's, so nothing here may create
  /dev/log (see rsyslog below).
- journald.  It runs as an ordinary process: it needs no PID 1, only its
  sockets, and it opens them itself under /run when not given them.  But a
  journald given no socket at all also opens the kernel's audit socket and,
  with 252's default Audit=yes, switches auditing on for the whole machine.
  So it is socket-activated as systemd-journald.socket does it, by systemd's
  own ``systemd-socket-activate -l /run/systemd/journal/stdout``: with one
  socket passed, it opens the native and syslog sockets itself and never
  touches audit.  That tool execs journald at the first connection and
  passes on only TERM, PATH, USER and HOME, hence ``-E`` for its settings.
  ``SYSTEMD_LOG_TARGET=console``: journald's stderr is not a terminal, so it
  would otherwise log about itself to /dev/kmsg.  Its settings are a drop-in
  in the namespace's /run/systemd/journald.conf.d; the host's journald.conf
  and drop-in directories are hidden behind /dev/null and empty directories,
  so that none of them (Storage=persistent, say, which would write to the
  host's /var/log/journal) counts.  Storage=volatile writes
  /run/log/journal/MACHINE-ID, that is, into the temp directory (journald
  takes the host's /etc/machine-id); ReadKMsg=no keeps the host's kernel
  messages out;
  ForwardToWall=no keeps emergency messages off the host's terminals;
  ForwardToSyslog=yes is Debian's default, stated so the host's file cannot
  change it.  journald removes /run/systemd/journal/streams/DEV:INO when it
  has read a stream to its end, which tells a test that every line is in.
- The stream, as systemd 252 connects a unit's stderr for
  ``StandardError=journal`` (src/core/execute.c, connect_logger_as): connect
  to /run/systemd/journal/stdout, shut down reading, write seven lines (the
  identifier, the unit name, the priority, level prefix, forward to syslog,
  to kmsg, to console), and set JOURNAL_STREAM to "DEV:INO" of the socket
  (fstat).  The values come from the unit file (`unit_stream_header`).
- rsyslog.  Debian's rsyslog.service requires syslog.socket, a datagram
  socket at /run/systemd/journal/syslog to which journald forwards every
  line; ``systemd-socket-activate --datagram`` passes that socket the same
  way, and rsyslogd runs in the foreground as the unit runs it (-n -iNONE).
  imuxsock finds that path by itself when /run/systemd/system exists; it is
  named here instead, so that it can never fall back to creating /dev/log.
  The rules are the file rules of the installed /etc/rsyslog.conf, their
  files moved to the temp directory; left out are its modules (imklog would
  read the host's kernel log), its $IncludeConfig (Debian's postfix.conf
  there adds a socket under /var/spool/postfix) and :omusrmsg: (writes to
  terminals).
"""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from testkit import processes
from testkit.daemon import REPO, Daemon, wait_for

JOURNALD = "/lib/systemd/systemd-journald"
RSYSLOG_CONF = Path("/etc/rsyslog.conf")
# Paths inside the namespace (the same in every systemd installation).
STDOUT_SOCKET = "/run/systemd/journal/stdout"
SYSLOG_SOCKET = "/run/systemd/journal/syslog"
STREAMS = "/run/systemd/journal/streams"  # one state file per open stream
JOURNAL_DIR = "/run/log/journal"  # Storage=volatile
JOURNAL_DROPIN = "/run/systemd/journald.conf.d/spfmilter-test.conf"
# Where else journald 252 reads settings (CONF_PATHS): hidden in the namespace.
HOST_JOURNAL_CONF = "/etc/systemd/journald.conf"
HOST_JOURNAL_DROPINS = tuple(
    f"{prefix}/systemd/journald.conf.d" for prefix in ("/etc", "/usr/local/lib", "/usr/lib", "/lib")
)

# What each program is in Debian, for a skip message.
_PACKAGES = {
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "sleep": "coreutils",
    "systemd-socket-activate": "systemd",
    "journalctl": "systemd",
    "rsyslogd": "rsyslog",
}

_STOP_TIMEOUT = 10  # seconds a program may take to exit after SIGTERM
_START_TIMEOUT = 10  # seconds to wait for a socket or a namespace

# syslog(3) facility and level names as systemd.exec(5) and rsyslog take them.
_FACILITY_NAMES = ("kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp")
FACILITIES = {name: number for number, name in enumerate(_FACILITY_NAMES)} | {
    "cron": 9,
    "authpriv": 10,
    "ftp": 11,
    **{f"local{n}": 16 + n for n in range(8)},
}
_LEVEL_NAMES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
LEVELS = {name: number for number, name in enumerate(_LEVEL_NAMES)}

JOURNAL_SETTINGS = """\
[Journal]
Storage=volatile
RuntimeMaxUse=16M
ReadKMsg=no
ForwardToSyslog=yes
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
"""


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def missing() -> list[str]:
    """The programs and files this module needs that are not installed,
    each with its Debian package."""
    absent = [f"{name} ({package})" for name, package in _PACKAGES.items() if not _which(name)]
    if not os.access(JOURNALD, os.X_OK):
        absent.append(f"{JOURNALD} (systemd)")
    if not RSYSLOG_CONF.exists():
        absent.append(f"{RSYSLOG_CONF} (rsyslog)")
    return absent


def _program(name: str) -> str:
    path = _which(name)
    if path is None:
        raise FileNotFoundError(f"{name} is not installed ({_PACKAGES[name]})")
    return path


def _stop(process: subprocess.Popen[bytes] | None) -> int | None:
    return processes.stop(process, _STOP_TIMEOUT)


# --- the unit's side: what systemd would write ------------------------------


@dataclass(frozen=True)
class StreamHeader:
    """The seven lines systemd 252 writes first on a unit's journal stream."""

    identifier: str
    unit_id: str
    priority: int  # facility * 8 + level
    level_prefix: bool
    forward_to_syslog: bool  # always false from 252's executor
    forward_to_kmsg: bool
    forward_to_console: bool

    def encode(self) -> bytes:
        flags = (
            self.level_prefix,
            self.forward_to_syslog,
            self.forward_to_kmsg,
            self.forward_to_console,
        )
        lines = [self.identifier, self.unit_id, str(self.priority), *(str(int(f)) for f in flags)]
        return "".join(f"{line}\n" for line in lines).encode()

    @property
    def facility(self) -> int:
        return self.priority >> 3


def _yes(value: str) -> bool:
    return value.strip().lower() in ("1", "yes", "true", "on")


def unit_stream_header(unit: Path) -> StreamHeader:
    """The header systemd would write for `unit`'s stderr, from its
    [Service] settings and systemd.exec(5)'s defaults (identifier: the
    executable's name; facility daemon, level info, level prefix on)."""
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    parser.read_string(unit.read_text(), source=str(unit))
    service = parser["Service"]
    output = service.get("StandardError", "inherit")
    if output not in ("journal", "journal+console", "kmsg", "kmsg+console"):
        raise ValueError(f"{unit}: StandardError={output} is not a journal stream")
    # ExecStart's first word, without its prefixes ("-", "@", "+", ...).
    executable = service["ExecStart"].split()[0].lstrip("-@:+!")
    facility = FACILITIES[service.get("SyslogFacility", "daemon")]
    level = LEVELS[service.get("SyslogLevel", "info")]
    return StreamHeader(
        identifier=service.get("SyslogIdentifier", Path(executable).name),
        unit_id=unit.name,
        priority=facility << 3 | level,
        level_prefix=_yes(service.get("SyslogLevelPrefix", "yes")),
        forward_to_syslog=False,
        forward_to_kmsg=output.startswith("kmsg"),
        forward_to_console=output.endswith("+console"),
    )


# --- the namespace --------------------------------------------------------


class Namespace:
    """A private mount namespace whose /run is `run_dir` on the host."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = run_dir.with_name("unshare.log")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        """Make the namespace and its mounts; return once they are in place."""
        unshare = [_program("unshare"), "--mount", "--propagation", "private"]
        with self.log_path.open("ab") as log:
            # Needs CAP_SYS_ADMIN: an unprivileged container fails here.
            self.process = subprocess.Popen(
                [*unshare, "--", _program("sleep"), "infinity"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        ours = os.readlink("/proc/self/ns/mnt")

        def unshared() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"unshare exited with {self.process.returncode}: {self.log_text()}"
                )
            with contextlib.suppress(FileNotFoundError):
                return os.readlink(f"/proc/{self.pid}/ns/mnt") != ours
            return False

        wait_for(unshared, _START_TIMEOUT, "the private mount namespace")
        self.bind(self.run_dir, "/run")
        if os.path.exists("/dev/kmsg"):
            self.bind(Path("/dev/null"), "/dev/kmsg")

    def bind(self, source: Path, target: str) -> None:
        """Bind `source` over `target`, in the namespace only."""
        processes.run(
            self.command(["mount", "--bind", str(source), target]),
            what=f"mount --bind {source} {target}",
            timeout=10,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def command(self, argv: Sequence[str], workdir: Path | None = None) -> list[str]:
        """`argv` run inside the namespace (nsenter execs it: same PID)."""
        where = [f"--wd={workdir}"] if workdir is not None else []
        nsenter = _program("nsenter")
        # --root: entering a mount namespace moves the root to the
        # namespace's own; inside a chroot (a fresh-debian system, say) the
        # holder's root is the chroot, and the paths given here are under it.
        return [nsenter, "--target", str(self.pid), "--mount", "--root", *where, "--", *argv]

    def host_path(self, path: str) -> Path:
        """Where a path under the namespace's /run is on the host."""
        relative = Path(path).relative_to("/run")
        return self.run_dir / relative

    def inside(self, path: str) -> str:
        """A path that names `path` as the namespace sees it, from anywhere
        (/proc/PID/root resolves in the holder's mounts)."""
        return f"/proc/{self.pid}/root{path}"

    def stop(self) -> None:
        _stop(self.process)


# --- journald ---------------------------------------------------------------


Entry = dict[str, str]


def _field(value: object) -> str:
    """A journalctl JSON field: text, or bytes as a list of numbers when
    it is not valid UTF-8."""
    if isinstance(value, list):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


class Journald:
    """systemd-journald inside `namespace`, socket-activated on its stdout socket."""

    def __init__(self, namespace: Namespace, workdir: Path) -> None:
        self.namespace = namespace
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "journald.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Listen on the stdout socket; journald itself is started at the
        first connection."""
        dropin = self.namespace.host_path(JOURNAL_DROPIN)
        dropin.parent.mkdir(parents=True, exist_ok=True)
        dropin.write_text(JOURNAL_SETTINGS)
        if os.path.exists(HOST_JOURNAL_CONF):
            self.namespace.bind(Path("/dev/null"), HOST_JOURNAL_CONF)
        empty = self.workdir / "empty"
        empty.mkdir(exist_ok=True)
        for directory in HOST_JOURNAL_DROPINS:
            if os.path.isdir(directory):
                self.namespace.bind(empty, directory)
        activate = [
            _program("systemd-socket-activate"),
            "-E",
            "SYSTEMD_LOG_TARGET=console",
            "-E",
            "SYSTEMD_LOG_LEVEL=notice",
            "-E",
            "SYSTEMD_LOG_COLOR=0",
            "-l",
            STDOUT_SOCKET,
            JOURNALD,
        ]
        self.process = _activate(
            self.namespace, activate, self.log_path, STDOUT_SOCKET, self.log_text
        )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def connect(self, header: StreamHeader) -> socket.socket:
        """A stream connected and introduced as systemd does for a unit's
        stderr (connect, shutdown(SHUT_RD), the header)."""
        stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Bound before it listens: a refused connect is retried.
            wait_for(
                lambda: _connected(stream, self.namespace.inside(STDOUT_SOCKET)),
                _START_TIMEOUT,
                "journald's stdout socket to accept",
            )
            stream.shutdown(socket.SHUT_RD)
            stream.sendall(header.encode())
        except BaseException:
            stream.close()
            raise
        return stream

    def open_streams(self) -> dict[str, str]:
        """The streams journald is reading now: state file name -> STREAM_ID."""
        found: dict[str, str] = {}
        directory = self.namespace.host_path(STREAMS)
        with contextlib.suppress(FileNotFoundError):
            for state in directory.iterdir():
                if state.name.startswith("."):  # being written (fopen_temporary)
                    continue
                with contextlib.suppress(FileNotFoundError):
                    text = state.read_text()
                    ids = re.findall(r"^STREAM_ID=(\w+)$", text, re.MULTILINE)
                    if ids:
                        found[state.name] = ids[0]
        return found

    def entries(self) -> list[Entry]:
        """Every entry in the journal so far, oldest first."""
        directory = self.namespace.host_path(JOURNAL_DIR)
        if not directory.exists():
            return []
        result = subprocess.run(
            [_program("journalctl"), f"--directory={directory}", "-o", "json", "--no-pager"],
            capture_output=True,
            timeout=30,
            check=False,
            env=dict(os.environ, SYSTEMD_LOG_LEVEL="warning", SYSTEMD_PAGER="cat"),
        )
        if result.returncode != 0 and b"No journal files were found" not in result.stderr:
            raise RuntimeError(f"journalctl: {result.stderr.decode(errors='replace')}")
        entries: list[Entry] = []
        for line in result.stdout.decode().splitlines():
            if line.strip():
                raw = json.loads(line)
                entries.append({key: _field(value) for key, value in raw.items()})
        return entries

    def log_text(self) -> str:
        """What journald said about itself (its console output)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int | None:
        return _stop(self.process)


def _connected(stream: socket.socket, path: str) -> bool:
    try:
        stream.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        return False
    return True


def _activate(
    namespace: Namespace,
    argv: Sequence[str],
    log_path: Path,
    socket_path: str,
    log: Callable[[], str],
) -> subprocess.Popen[bytes]:
    """Start `argv` (systemd-socket-activate and the daemon it serves) in the
    namespace, its output appended to `log_path`, and wait until it has bound
    `socket_path` (a path inside the namespace)."""
    # The activation tool's own notes ("Listening on ...") stay out of the log.
    env = dict(os.environ, SYSTEMD_LOG_LEVEL="warning", SYSTEMD_LOG_COLOR="0")
    with log_path.open("ab") as output:
        process = subprocess.Popen(
            namespace.command(argv),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
        )
    path = namespace.host_path(socket_path)

    def bound() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}:\n{log()}")
        return path.is_socket()

    wait_for(bound, _START_TIMEOUT, f"a socket at {path}")
    return process


# --- rsyslog ---------------------------------------------------------------


@dataclass(frozen=True)
class FileRule:
    """One `selector  [-]/path` line of a syslog configuration."""

    selector: str
    path: str

    @property
    def name(self) -> str:
        return Path(self.path).name

    def selects(self, facility: int, level: int) -> bool:
        """Whether a message of this facility and level goes to the file
        (rsyslog.conf(5): ";" separates filters, a later one overrides,
        "none" excludes, a level means that level and more urgent)."""
        chosen = False
        for part in self.selector.split(";"):
            names, _, priority = part.partition(".")
            if names != "*" and facility not in {FACILITIES.get(n) for n in names.split(",")}:
                continue
            if priority == "none":
                chosen = False
            elif priority == "*":
                chosen = True
            elif priority in LEVELS:
                chosen = level <= LEVELS[priority]
            else:  # "=info", "!info", aliases: not in Debian's stock rules
                raise ValueError(f"selector not understood: {self.selector}")
        return chosen


_FILE_RULE = re.compile(r"^([^\s#$][^\s]*\.[^\s]+)\s+-?(/\S+)\s*$")


def file_rules(conf: str) -> list[FileRule]:
    """The rules of a syslog configuration that write to a file."""
    return [
        FileRule(match[1], match[2])
        for match in (_FILE_RULE.match(line) for line in conf.splitlines())
        if match
    ]


class Rsyslog:
    """rsyslogd inside `namespace`, given journald's syslog socket as
    Debian's syslog.socket gives it, writing `rules` under `log_dir`."""

    def __init__(self, namespace: Namespace, workdir: Path, rules: Sequence[FileRule]) -> None:
        self.namespace = namespace
        self.workdir = workdir
        self.rules = tuple(rules)
        self.log_dir = workdir / "log"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (workdir / "spool").mkdir(exist_ok=True)
        self.config_path = workdir / "rsyslog.conf"
        self.log_path = workdir / "rsyslogd.log"
        self.process: subprocess.Popen[bytes] | None = None

    def config_text(self) -> str:
        lines = [
            f'module(load="imuxsock" SysSock.Name="{SYSLOG_SOCKET}")',
            # Its own messages into these rules: left to syslog(3), they
            # would go to /dev/log, the host's.
            f'global(workDirectory="{self.workdir / "spool"}" processInternalMessages="on")',
            *(f"{rule.selector}\t-{self.log_dir / rule.name}" for rule in self.rules),
        ]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        """Listen on the syslog socket; rsyslogd starts at the first datagram."""
        rsyslogd = _program("rsyslogd")
        self.config_path.write_text(self.config_text())
        processes.run([rsyslogd, "-N1", "-f", self.config_path], what="rsyslogd -N1", timeout=30)
        activate = [
            _program("systemd-socket-activate"),
            "--datagram",
            "-l",
            SYSLOG_SOCKET,
            rsyslogd,
            "-n",
            "-iNONE",
            "-f",
            str(self.config_path),
        ]
        self.process = _activate(
            self.namespace, activate, self.log_path, SYSLOG_SOCKET, self.log_text
        )

    def file(self, name: str) -> Path:
        return self.log_dir / name

    def lines(self, name: str) -> list[str]:
        path = self.file(name)
        return path.read_text(errors="replace").splitlines() if path.exists() else []

    def log_text(self) -> str:
        """What rsyslogd wrote to its stderr (nothing, when all is well)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def unexpected(self) -> list[str]:
        """rsyslogd's own messages in its files, but for starting on the
        socket it was given and stopping."""
        usual = re.compile(
            r"imuxsock: Acquired UNIX socket '" + re.escape(SYSLOG_SOCKET) + "' .* from systemd"
            r'|\[origin software="rsyslogd" .*\] (start|exiting on signal 15\.)$'
        )
        return [
            line
            for rule in self.rules
            for line in self.lines(rule.name)
            if re.search(r" rsyslogd(\[\d+\])?: ", line) and not usual.search(line)
        ]

    def stop(self) -> int | None:
        return _stop(self.process)


# --- the whole stack and a daemon in it ------------------------------------


class LoggingStack:
    """The namespace, rsyslogd and journald, started in that order (the
    syslog socket must exist before journald forwards to it) and stopped
    in the reverse one."""

    def __init__(self, workdir: Path, rules: Sequence[FileRule]) -> None:
        self.namespace = Namespace(workdir / "run")
        self.rsyslog = Rsyslog(self.namespace, workdir / "rsyslog", rules)
        self.journald = Journald(self.namespace, workdir / "journald")

    def __enter__(self) -> LoggingStack:
        try:
            self.namespace.start()
            self.rsyslog.start()
            self.journald.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.journald.stop()
        self.rsyslog.stop()
        self.namespace.stop()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class JournaledDaemon(Daemon):
    """A Daemon started inside the namespace with its stderr on a journal
    stream, the way systemd starts the unit; its log is the stream's
    journal entries."""

    def __init__(
        self,
        workdir: Path,
        config: str,
        journald: Journald,
        header: StreamHeader,
        socket_spec: str | None = None,
    ) -> None:
        super().__init__(workdir, config, socket_spec)
        self.journald = journald
        self.header = header
        self.stream_id = ""

    def start(self, *extra: str, timeout: float = 20) -> None:
        """Start and return once the socket accepts connections."""
        before = set(self.journald.open_streams().values())
        self.process = start_on_stream(
            self.journald, self.header, self.journald.namespace.command(self.argv(*extra), REPO)
        )

        def introduced() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"spfmilter exited with {self.process.returncode}; log:\n{self.log_text()}"
                )
            new = set(self.journald.open_streams().values()) - before
            if new:
                (self.stream_id,) = new
            return bool(new)

        try:
            wait_for(introduced, timeout, "journald to read the stream's header")
            self.wait_started(timeout)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"spfmilter did not start; log:\n{self.log_text()}") from None

    def entries(self) -> list[Entry]:
        """The journal entries of this daemon's stream (its workers' too);
        before journald has read the stream's header, those of its PID."""
        if self.stream_id:
            return [e for e in self.journald.entries() if e.get("_STREAM_ID") == self.stream_id]
        return [e for e in self.journald.entries() if e.get("_PID") == str(self.pid)]

    def log_text(self) -> str:
        return "".join(f"{e.get('MESSAGE', '')}\n" for e in self.entries())

    def drained(self) -> bool:
        """Whether journald has read the stream to its end (the daemon and
        every process that inherited its stderr are gone)."""
        return self.stream_id not in self.journald.open_streams().values()

    def unexpected(self, allowed: tuple[str, ...] = ()) -> list[str]:
        """Entries at warning level or more urgent not matching `allowed`
        (applied to MESSAGE).  The warning that the tests' `user = root`
        asks for is always allowed."""
        allowed = (*allowed, r"running as root: \[milter\] user = root was asked for")
        return [
            f"<{e.get('PRIORITY')}>{e.get('MESSAGE', '')}"
            for e in self.entries()
            if int(e.get("PRIORITY", "6")) <= LEVELS["warning"]
            and not any(re.search(a, e.get("MESSAGE", "")) for a in allowed)
        ]


def start_on_stream(
    journald: Journald, header: StreamHeader, argv: Sequence[str]
) -> subprocess.Popen[bytes]:
    """Start `argv` with stderr on a new journal stream, as systemd starts
    a unit with StandardError=journal and StandardOutput=null."""
    with journald.connect(header) as stream:
        info = os.fstat(stream.fileno())
        env = dict(os.environ, JOURNAL_STREAM=f"{info.st_dev}:{info.st_ino}")
        # systemd sets no PYTHONUNBUFFERED: stderr's own buffering counts.
        env.pop("PYTHONUNBUFFERED", None)
        # The manager keeps no copy of the stream: it ends with the program.
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stream.fileno(),
            env=env,
        )


def python_in(namespace: Namespace) -> list[str]:
    """This interpreter, run inside `namespace` from the repository."""
    return namespace.command([sys.executable], workdir=REPO)
