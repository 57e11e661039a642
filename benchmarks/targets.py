"""The three targets of the comparison, started side by side.

This module owns the milters the benchmarks measure and how each is run:

- spfmilter: ``python -m spfmilter --config FILE --socket SPEC`` (the
  testkit's daemon runner), ``[dns] nameservers = 127.0.0.1:PORT``;
- baseline: the bare pymilter daemon (python -m benchmarks.baseline), which
  does the protocol work and adds one header, without SPF;
- pyspf-milter: Debian's package (``apt-get install pyspf-milter``), run as
  ``/usr/bin/pyspf-milter CONFIG`` in the foreground with a config file of
  our own.  It resolves through the system resolver (port 53 from
  /etc/resolv.conf), so it runs in a private mount namespace (``unshare
  --mount``) in which a private resolv.conf is bind-mounted over
  /etc/resolv.conf, naming a loopback address where the benchmark's DNS
  also answers on port 53.  It takes the HELO identity from the connect
  step's hostname, not from HELO, so every transaction connects with
  hostname = HELO name.

Each target runs as processes of its own (unix socket; a second instance
on inet:PORT@127.0.0.1 for the inet workload).  Besides starting and
stopping them by PID, it owns what each must answer (the one header it
adds), which of its log lines are problems, and the checks that this
machine can run pyspf-milter at all.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from benchmarks.baseline import BASELINE_HEADER
from benchmarks.benchdns import BenchDNS, address_in_use
from benchmarks.milterproc import BaselineDaemon, MilterProcess
from benchmarks.workloads import RECEIVER
from testkit.daemon import Daemon, free_port

PYSPF_MILTER = Path("/usr/bin/pyspf-milter")

SPFMILTER = "spfmilter"
# spfmilter with [dns] prefetch = yes whatever the options say (bench_trees
# runs it beside SPFMILTER with prefetch = no).
SPFMILTER_PREFETCH = "spfmilter-prefetch"
BASELINE = "baseline"
PYSPF = "pyspf-milter"
TARGETS = (SPFMILTER, BASELINE, PYSPF)
TARGET_TITLES = {
    SPFMILTER: "spfmilter",
    SPFMILTER_PREFETCH: "spfmilter with prefetch",
    BASELINE: "bare pymilter (adds one header)",
    PYSPF: "Debian pyspf-milter",
}


@dataclass(frozen=True)
class Expectation:
    """The one header a target must add to every message.

    value_pattern is a regular expression searched in the value with folding
    whitespace collapsed; {helo} and {domain} in it stand for the escaped
    HELO name and sender domain of the transaction, {verdict} for the SPF
    result the sender's records must give (pass, fail, permerror ...).
    """

    header: str
    value_pattern: str

    def check(self, value: str, helo: str, domain: str, verdict: str) -> bool:
        pattern = self.value_pattern.format(
            helo=re.escape(helo), domain=re.escape(domain), verdict=re.escape(verdict)
        )
        return re.search(pattern, " ".join(value.split())) is not None


EXPECTATIONS = {
    # Received-SPF: pass (...) ...; envelope-from="user@DOMAIN"; helo=HELO; ...
    SPFMILTER: Expectation(
        "Received-SPF", r"^{verdict}\b.*envelope-from=\S*@{domain}\b.*\bhelo={helo};"
    ),
    SPFMILTER_PREFETCH: Expectation(
        "Received-SPF", r"^{verdict}\b.*envelope-from=\S*@{domain}\b.*\bhelo={helo};"
    ),
    BASELINE: Expectation(BASELINE_HEADER, r"^1$"),
    # Authentication-Results: mx.bench.example; spf=pass (sender SPF authorized)
    #   smtp.mailfrom=DOMAIN (client-ip=...; helo=HELO; envelope-from=...; ...)
    PYSPF: Expectation(
        "Authentication-Results",
        rf"^{re.escape(RECEIVER)}; spf={{verdict}}\b"
        r".*smtp\.mailfrom={domain} \(.*\bhelo={helo};",
    ),
}


class Running(Protocol):
    """One daemon process of a target, listening on socket (a libmilter spec)."""

    socket: str
    log_path: Path

    @property
    def pid(self) -> int: ...

    def start(self) -> None: ...

    def stop(self) -> object: ...


@dataclass
class Target:
    """A target's daemons: one on a unix socket, one on inet if asked for."""

    name: str
    unix: Running
    inet: Running | None
    log: DaemonLog

    def instance(self, inet: bool) -> Running:
        if not inet:
            return self.unix
        if self.inet is None:
            raise ValueError(f"{self.name} was started without an inet instance")
        return self.inet


class DaemonLog:
    """The output files of a target's daemons, split at the end of start-up.

    What a daemon says while starting is a note (spfmilter warns that it
    runs as root and that Postfix could not reach a socket in our private
    temporary directory); a problem line it logs while measured fails the run.
    """

    def __init__(self, paths: Sequence[Path], problem: str) -> None:
        self.paths = list(paths)
        self.problem = re.compile(problem)
        self.started = {path: path.stat().st_size if path.exists() else 0 for path in self.paths}

    def lines(self, during_runs: bool) -> list[str]:
        found = []
        for path in self.paths:
            data = path.read_bytes() if path.exists() else b""
            start = self.started[path]
            part = (data[start:] if during_runs else data[:start]).decode(errors="replace")
            found += [line for line in part.splitlines() if self.problem.search(line)]
        return found


def log_findings(targets: Mapping[str, Target]) -> tuple[list[str], list[str]]:
    """What the targets logged: (problems while measured, notes from start-up)."""
    problems, notes = [], []
    for t in targets.values():
        problems += [f"{t.name} logged: {line}" for line in t.log.lines(during_runs=True)]
        notes += [f"{t.name} said at start: {line}" for line in t.log.lines(during_runs=False)]
    return problems, notes


# spfmilter's own notion of a problem (testkit/daemon.py Daemon.unexpected).
SPFMILTER_PROBLEM = r"^(WARNING|ERROR|CRITICAL)\b|Traceback"
# The others log tracebacks and errors to their output, if anything.
OTHER_PROBLEM = r"Traceback|\bError\b|\bERROR\b|Exception"


def spfmilter_config(nameserver: str, options: Sequence[tuple[str, str, str]]) -> str:
    sections: dict[str, dict[str, str]] = {
        # As root without a privilege drop: the daemon says so with a warning.
        "milter": {"user": "root"},
        "dns": {"nameservers": nameserver},
    }
    for section, key, value in options:
        sections.setdefault(section, {})[key] = value
    return "".join(
        f"[{section}]\n" + "".join(f"{key} = {value}\n" for key, value in values.items())
        for section, values in sections.items()
    )


def pyspf_milter_config(
    socket_spec: str, pid_file: Path, overrides: Mapping[str, str] | None = None
) -> str:
    """A config for Debian's pyspf-milter that passes the benchmark's mail.

    Both identities are checked (HELO, then MAIL FROM) and only fail
    results would reject; errors neither reject nor defer.  overrides
    replace or add settings (e.g. Mail_From_reject = False: none reject).  It adds one
    Authentication-Results header (the milter front end always uses that
    type) with our authserv-id.  It runs as root rather than its own
    account so that it can create its socket in our temporary directory.
    debugLevel 1 is the packaged default (a syslog line at connect and
    one per verdict; this namespace has no /dev/log, so they go nowhere).
    """
    settings = {
        "debugLevel": "1",
        "TestOnly": "1",
        "HELO_reject": "Fail",
        "Mail_From_reject": "Fail",
        "PermError_reject": "False",
        "TempError_Defer": "False",
        "skip_addresses": "127.0.0.0/8,::ffff:127.0.0.0/104,::1",
        "Authserv_Id": RECEIVER,
        "Socket": socket_spec,
        "PidFile": str(pid_file),
        "UserID": "root",
        "InternalHosts": "127.0.0.1",
        **(overrides or {}),
    }
    return "".join(f"{key} = {value}\n" for key, value in settings.items())


def pyspf_milter_process(
    workdir: Path,
    name: str,
    spec: str,
    resolver: str,
    env: Mapping[str, str],
    overrides: Mapping[str, str] | None = None,
) -> MilterProcess:
    """pyspf-milter in a mount namespace whose /etc/resolv.conf names resolver."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / f"{name}.conf"
    config.write_text(pyspf_milter_config(spec, workdir / f"{name}.pid", overrides))
    resolv_conf = workdir / "resolv.conf"
    resolv_conf.write_text(f"nameserver {resolver}\n")
    # unshare and sh exec in turn, so the PID started is pyspf-milter's own.
    script = "\n".join(
        [
            shlex.join(["mount", "--bind", str(resolv_conf), "/etc/resolv.conf"]),
            "exec " + shlex.join([str(PYSPF_MILTER), str(config)]),
        ]
    )
    argv = ["unshare", "--mount", "sh", "-ec", script]
    return MilterProcess(name, argv, spec, workdir / f"{name}.log", env)


def pyspf_milter_env(workdir: Path, dns_module: str) -> dict[str, str]:
    """The environment pyspf-milter runs in.

    "system": as installed.  "dnspython": with this venv's dnspython on
    PYTHONPATH (alone, through a symlink), so that pyspf, which prefers
    dnspython to py3dns, resolves with it: what a machine with Debian's
    python3-dnspython installed does.
    """
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if dns_module == "dnspython":
        import dns

        path = workdir / "pyspf-dnspython"
        path.mkdir(parents=True, exist_ok=True)
        (path / "dns").symlink_to(Path(dns.__file__).parent)
        env["PYTHONPATH"] = str(path)
    return env


def foreign_pyspf_milters() -> list[str]:
    """pyspf-milter processes on this machine (we have started none yet)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if any(arg.endswith(b"pyspf-milter") for arg in argv[:2]):
                found.append(f"{entry.name} {b' '.join(argv).decode(errors='replace')}")
    return found


def pyspf_dns_library(env: Mapping[str, str]) -> str:
    """Which DNS module the system's pyspf (and so pyspf-milter) resolves with.

    pyspf takes dnspython if it can import it and falls back to py3dns, so
    the answer depends on which python3 packages happen to be installed.
    """
    probe = "import sys, spf; print('dnspython' if 'dns.resolver' in sys.modules else 'py3dns')"
    proc = subprocess.run(
        ["/usr/bin/python3", "-c", probe], capture_output=True, text=True, check=False, env=env
    )
    return proc.stdout.strip() or f"unknown ({proc.stderr.strip()[-200:]})"


def package_version(package: str) -> str:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() if proc.returncode == 0 else "not installed"


# Each target's problem lines and the file name of its unix socket.
_PROBLEMS = {
    SPFMILTER: SPFMILTER_PROBLEM,
    SPFMILTER_PREFETCH: SPFMILTER_PROBLEM,
    BASELINE: OTHER_PROBLEM,
    PYSPF: OTHER_PROBLEM,
}
_UNIX_SOCKETS = {
    SPFMILTER: "spfmilter.sock",
    SPFMILTER_PREFETCH: "spfmilter-prefetch.sock",
    BASELINE: "baseline.sock",
    PYSPF: "pyspf.sock",
}


@contextlib.contextmanager
def started_targets(
    workdir: Path,
    dns: BenchDNS,
    spf_options: Sequence[tuple[str, str, str]],
    pyspf_env: Mapping[str, str],
    names: Sequence[str] = TARGETS,
    inet: bool = True,
    pyspf_overrides: Mapping[str, str] | None = None,
) -> Iterator[dict[str, Target]]:
    """The targets named, each on a unix socket and, with inet, on a free
    port of 127.0.0.1 too; every process started is stopped by its PID."""
    configs = {
        SPFMILTER: spfmilter_config(dns.nameserver, spf_options),
        SPFMILTER_PREFETCH: spfmilter_config(
            dns.nameserver, [*spf_options, ("dns", "prefetch", "yes")]
        ),
    }
    pyspf_dir = workdir / "pyspf-milter"

    def process(name: str, instance: str) -> Running:
        unix = f"unix:{workdir}/{_UNIX_SOCKETS[name]}"
        if name in configs:
            # Without a socket, Daemon listens on a free port of 127.0.0.1.
            spec = unix if instance == "unix" else None
            return Daemon(workdir / f"{name}-{instance}", configs[name], spec)
        spec = unix if instance == "unix" else f"inet:{free_port()}@127.0.0.1"
        if name == BASELINE:
            return BaselineDaemon(spec, workdir / f"baseline-{instance}.log")
        return pyspf_milter_process(
            pyspf_dir,
            f"pyspf-milter-{instance}",
            spec,
            dns.system_address,
            pyspf_env,
            pyspf_overrides,
        )

    with contextlib.ExitStack() as stack:

        def start(daemon: Running) -> Running:
            stack.callback(daemon.stop)
            daemon.start()
            return daemon

        targets = {}
        for name in names:
            unix = start(process(name, "unix"))
            tcp = start(process(name, "inet")) if inet else None
            paths = [daemon.log_path for daemon in (unix, tcp) if daemon is not None]
            targets[name] = Target(name, unix, tcp, DaemonLog(paths, _PROBLEMS[name]))
        yield targets


def preflight(system_dns_address: str) -> None:
    if os.geteuid() != 0:
        raise SystemExit("needs root: pyspf-milter runs in a mount namespace, DNS on port 53")
    if not PYSPF_MILTER.exists():
        raise SystemExit(f"{PYSPF_MILTER} missing: apt-get install pyspf-milter")
    for tool in ("unshare", "mount"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} (util-linux) is needed")
    others = foreign_pyspf_milters()
    if others:
        # Not ours to stop: the package's service (systemctl stop pyspf-milter,
        # or invoke-rc.d pyspf-milter stop) would compete for the CPU.
        raise SystemExit("a pyspf-milter is already running:\n" + "\n".join(others))
    if not ipaddress.IPv4Address(system_dns_address).is_loopback:
        raise SystemExit(f"{system_dns_address} is not a loopback address")
    if address_in_use(system_dns_address):
        raise SystemExit(f"{system_dns_address} is in use; pick another with --system-dns-address")
