"""The files in systemd/, checked offline with systemd's own tools.

CI installs the systemd package but does not run systemd as PID 1, so no
service is started here.  `systemd-analyze verify` and `systemd-analyze
security --offline=true` load the unit file by themselves; systemd-sysusers
and systemd-tmpfiles apply their files to a scratch root (--root) instead of
the machine; the unit's --check-config command lines run against this
repository's example configuration.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "spfmilter.service"
SOCKET_UNIT = ROOT / "systemd" / "spfmilter.socket"
SYSUSERS = ROOT / "systemd" / "spfmilter.sysusers"
TMPFILES = ROOT / "systemd" / "spfmilter.tmpfiles"
EXAMPLE_CONFIG = ROOT / "spfmilter.cfg"

# Where the unit expects the console script and the configuration.
INSTALLED_BINARY = "/usr/local/bin/spfmilter"
INSTALLED_CONFIG = "/etc/spfmilter/spfmilter.cfg"
# The console script next to the interpreter running the tests.  Not
# resolved: a venv's python is a symlink to an interpreter elsewhere.
BINARY = Path(sys.executable).parent / "spfmilter"

# The socket in Postfix's chroot, and its name in main.cf (relative to it).
CHROOT_SOCKET = "/var/spool/postfix/spfmilter/spfmilter.sock"
POSTFIX_SOCKET = "unix:spfmilter/spfmilter.sock"

EXPOSURE = re.compile(r"Overall exposure level for spfmilter\.service: (\d+\.\d+) (\w+)")
# Better than "OK" are only SAFE and PERFECT.
ACCEPTED_LEVELS = ("PERFECT", "SAFE", "OK")
# Seconds a start that fails may take on a busy 2-core machine: the
# configuration check, then the daemon's own start (imports, warm-up).
FAILED_START = 8.0
# The unit's score with systemd 252 (Debian 12).  A higher one means a
# sandbox setting was dropped: raise this only on purpose.
MAX_EXPOSURE = 1.1

# Plain, complete diagnostics whatever the caller's environment says: the
# "..., ignoring" lines are warnings, and a debug level would bury them.
SYSTEMD_ENV = {
    **os.environ,
    "SYSTEMD_LOG_LEVEL": "warning",
    "SYSTEMD_LOG_COLOR": "0",
    "SYSTEMD_COLORS": "0",
    "SYSTEMD_PAGER": "cat",
}


def tool(name: str) -> str:
    """The path of one of systemd's tools, or skip the test without it."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package systemd)")
    return path


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, env=SYSTEMD_ENV, timeout=60, check=False
    )


def assignments(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of every assignment in a unit file, in order.

    configparser cannot read units: keys like ExecReload= repeat.
    """
    found = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {raw!r}"
        found.append((section, key.strip(), value.strip()))
    return found


def service_values(key: str) -> list[str]:
    return [v for s, k, v in assignments(UNIT.read_text()) if s == "Service" and k == key]


def local_unit(directory: Path, text: str | None = None) -> Path:
    """The unit (or `text`) written to `directory`, running this checkout's binary.

    verify fails a unit whose Exec*= binaries do not exist, and
    /usr/local/bin/spfmilter does not on a test machine.  The file keeps its
    name: verify and security name the unit after it.
    """
    assert BINARY.is_file(), f"{BINARY}: run the tests with the environment's own python"
    text = UNIT.read_text() if text is None else text
    assert INSTALLED_BINARY in text
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / UNIT.name
    path.write_text(text.replace(INSTALLED_BINARY, str(BINARY)))
    # The socket unit beside it, as installed: the service requires it.
    (directory / SOCKET_UNIT.name).write_text(SOCKET_UNIT.read_text())
    return path


def verify_problems(unit: Path) -> list[str]:
    """What `systemd-analyze verify` finds wrong with `unit` (empty: nothing).

    An explicit --recursive-errors matters: without one, systemd 252 exits 0
    even after "..., ignoring" warnings (a misspelt key, an unparsable value).
    "no" judges only this unit, not the installed units it names (postfix).
    --man=no: no man-db needed.
    """
    analyze = tool("systemd-analyze")
    result = run([analyze, "verify", "--man=no", "--recursive-errors=no", str(unit)])
    # Warnings about this unit name its file, and the binary's name is the same.
    problems = [line for line in result.stderr.splitlines() if "spfmilter" in line]
    if result.returncode != 0:
        problems.append(f"exit status {result.returncode}: {result.stderr.strip()}")
    return problems


def test_unit_verifies(tmp_path: Path) -> None:
    assert verify_problems(local_unit(tmp_path)) == []


def test_socket_unit_verifies(tmp_path: Path) -> None:
    local_unit(tmp_path)
    assert verify_problems(tmp_path / SOCKET_UNIT.name) == []


def socket_values(key: str) -> list[str]:
    return [v for s, k, v in assignments(SOCKET_UNIT.read_text()) if s == "Socket" and k == key]


def test_the_socket_is_in_postfix_chroot_for_postfix_only() -> None:
    # main.cf names it relative to the chroot; only root and group postfix
    # may connect; systemd, not the daemon, makes it (the service's file
    # system is read-only there).
    assert socket_values("ListenStream") == [CHROOT_SOCKET]
    assert CHROOT_SOCKET.endswith(POSTFIX_SOCKET.removeprefix("unix:"))
    assert socket_values("SocketUser") == ["spfmilter"]
    assert socket_values("SocketGroup") == ["postfix"]
    assert socket_values("SocketMode") == ["0660"]
    assert service_values("Type") == ["notify"]
    # The supervisor drains its workers: systemd must not signal them too.
    assert service_values("KillMode") == ["mixed"]
    unit = [(k, v) for s, k, v in assignments(UNIT.read_text()) if s == "Unit"]
    assert ("Requires", SOCKET_UNIT.name) in unit and ("After", SOCKET_UNIT.name) in unit


def test_a_crash_loop_reaches_the_start_limit() -> None:
    # Restart= tries again after RestartSec=; the start limit must be
    # reached by a daemon that fails at once, or it restarts for ever.  A
    # failing start itself takes up to FAILED_START seconds.
    unit = dict((k, v) for s, k, v in assignments(UNIT.read_text()) if s == "Unit")
    (restart_sec,) = service_values("RestartSec")
    interval = float(unit["StartLimitIntervalSec"].removesuffix("s"))
    burst = int(unit["StartLimitBurst"])
    # Starts at 0, c, 2c, ... : the one refused is number burst + 1.
    assert burst * (float(restart_sec.removesuffix("s")) + FAILED_START) < interval


# (what is wrong, text in the unit, replacement): each must make verify fail,
# or test_unit_verifies could not notice the same mistake.
BREAKAGES = [
    ("misspelt key", "NoNewPrivileges=yes", "NoNewPrivilege=yes"),
    ("bad value", "RestartSec=2s", "RestartSec=soon"),
    ("unknown syscall group", "SystemCallFilter=@system-service", "SystemCallFilter=@system"),
    ("bad user name", "User=spfmilter", "User=spf:milter"),
    (
        "missing binary",
        f"ExecStart={INSTALLED_BINARY} --config {INSTALLED_CONFIG}",
        f"ExecStart=/nonexistent/spfmilter --config {INSTALLED_CONFIG}",
    ),
]


@pytest.mark.parametrize(
    ("original", "broken"), [b[1:] for b in BREAKAGES], ids=[b[0] for b in BREAKAGES]
)
def test_verify_catches_a_broken_unit(tmp_path: Path, original: str, broken: str) -> None:
    text = UNIT.read_text()
    assert text.count(original + "\n") == 1
    unit = local_unit(tmp_path, text.replace(original + "\n", broken + "\n"))
    assert verify_problems(unit) != []


def test_security_exposure(tmp_path: Path) -> None:
    unit = local_unit(tmp_path)
    result = run([tool("systemd-analyze"), "security", "--offline=true", "--no-pager", str(unit)])
    assert result.returncode == 0, result.stderr
    # The table, then one line: "→ Overall exposure level for UNIT: 1.1 OK 🙂".
    match = EXPOSURE.search(result.stdout.strip().splitlines()[-1])
    assert match is not None, result.stdout
    score, level = float(match[1]), match[2]
    print(f"systemd-analyze security: spfmilter.service exposure {score} {level}")
    assert level in ACCEPTED_LEVELS, result.stdout
    assert score <= MAX_EXPOSURE, result.stdout


def local_command(value: str, config: Path) -> list[str]:
    """An Exec*= command line of the unit, run from this checkout on `config`."""
    argv = shlex.split(value)
    assert argv[0] == INSTALLED_BINARY and argv.count(INSTALLED_CONFIG) == 1, value
    return [str(BINARY)] + [str(config) if a == INSTALLED_CONFIG else a for a in argv[1:]]


def test_check_config_command_lines(tmp_path: Path) -> None:
    # The check before a start and the one before a reload: they pass the
    # example configuration and refuse a broken one with EX_CONFIG.
    checks = [*service_values("ExecStartPre"), service_values("ExecReload")[0]]
    broken = tmp_path / "broken.cfg"
    broken.write_text("[policy]\nhelo_rejekt = fail\n")
    for value in checks:
        assert "--check-config" in shlex.split(value)
        result = run(local_command(value, EXAMPLE_CONFIG))
        assert result.returncode == 0, result.stderr
        result = run(local_command(value, broken))
        assert result.returncode == 78, result.stderr
        assert "helo_rejekt" in result.stderr


def test_a_refused_reload_logs_an_error_not_a_fatal_one(tmp_path: Path) -> None:
    # The check before a reload writes to the journal; the daemon keeps
    # running on its configuration, so nothing there is fatal.
    broken = tmp_path / "broken.cfg"
    broken.write_text("[policy]\nhelo_rejekt = fail\n")
    journal = tmp_path / "journal"
    with journal.open("w") as stream:
        info = os.fstat(stream.fileno())
        env = {**SYSTEMD_ENV, "JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
        subprocess.run(
            local_command(service_values("ExecReload")[0], broken),
            stdout=subprocess.DEVNULL,
            stderr=stream,
            env=env,
            timeout=60,
            check=False,
        )
    assert journal.read_text().startswith("<3>error: "), journal.read_text()


def test_exec_start_runs_in_the_foreground_on_the_config() -> None:
    (value,) = service_values("ExecStart")
    assert shlex.split(value) == [INSTALLED_BINARY, "--config", INSTALLED_CONFIG]
    # The same options with --check-config: the daemon's parser takes them.
    result = run([*local_command(value, EXAMPLE_CONFIG), "--check-config"])
    assert result.returncode == 0, result.stderr


def test_reload_signals_usr1_never_hup() -> None:
    # libmilter stops the daemon on SIGHUP; SIGUSR1 re-reads the configuration.
    reloads = service_values("ExecReload")
    assert reloads[-1] == "/bin/kill -USR1 $MAINPID"
    assert not any("HUP" in value for value in reloads)


def entries(path: Path) -> dict[str, list[str]]:
    """The entries of a passwd or group file by name, split at the colons."""
    return {
        fields[0]: fields for fields in (line.split(":") for line in path.read_text().splitlines())
    }


def create_account(root: Path) -> tuple[int, int]:
    """Apply spfmilter.sysusers to the scratch root; return spfmilter's uid and gid."""
    (root / "etc").mkdir(parents=True, exist_ok=True)
    result = run([tool("systemd-sysusers"), f"--root={root}", str(SYSUSERS)])
    assert result.returncode == 0, result.stderr
    _, _, uid, gid, _, _, shell = entries(root / "etc" / "passwd")["spfmilter"]
    assert shell == "/usr/sbin/nologin"
    assert entries(root / "etc" / "group")["spfmilter"][2] == gid
    return int(uid), int(gid)


def test_sysusers_creates_a_system_account(tmp_path: Path) -> None:
    uid, gid = create_account(tmp_path / "root")
    # A system account: below the first regular user (Debian: 1000).
    assert 0 < uid < 1000
    assert 0 < gid < 1000


def test_tmpfiles_creates_the_config(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("systemd-tmpfiles needs root to give files to root")
    root = tmp_path / "root"
    create_account(root)
    tmpfiles = [tool("systemd-tmpfiles"), "--create", f"--root={root}", str(TMPFILES)]
    result = run(tmpfiles)
    assert result.returncode == 0, result.stderr

    config = root / INSTALLED_CONFIG.lstrip("/")
    status = config.stat()
    assert (status.st_mode & 0o7777, status.st_uid) == (0o644, 0)
    # The created file means the built-in defaults.
    result = run([str(BINARY), "--check-config", "--config", str(config)])
    assert result.returncode == 0, result.stderr
    # Nothing under Postfix's spool: spfmilter.socket makes its directory.
    assert not (root / "var").exists()

    # Run again (as at every boot): an edited configuration is kept.
    config.write_text("[policy]\ndry_run = yes\n")
    result = run(tmpfiles)
    assert result.returncode == 0, result.stderr
    assert config.read_text() == "[policy]\ndry_run = yes\n"
