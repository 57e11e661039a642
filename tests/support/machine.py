"""A fresh Debian 12 booted with systemd as PID 1, for tests of the admin's path.

Owns the machine's life: a base system made once with mmdebstrap and kept
as a tarball (Debian's systemd, and the tools the test itself uses:
swaks, and python3-dnslib and python3-yaml for the test DNS server), a new
copy of it per test, the Debian packages the administrator will install
downloaded in advance (the booted machine has a private network: no query
and no mail leaves it), a clone of the repository under /root, booting it
with systemd-nspawn (`--register=no --keep-unit`: the host need not run
systemd), running commands in it through nsenter, a reboot, and a
poweroff that leaves no process and no directory behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from testkit.daemon import wait_for

CACHE = Path("/var/cache/spfmilter-tests")
# The machine before the administrator starts: a Debian 12 with systemd,
# and the test's own tools.
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "swaks", "python3-dnslib", "python3-yaml")
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# nspawn's exit status when the machine asked to be rebooted.
REBOOTED = 133


def base_tarball() -> Path:
    """Debian 12 with BASE_PACKAGES, made on first use (about a minute)."""
    key = hashlib.sha256(" ".join(BASE_PACKAGES).encode()).hexdigest()[:12]
    tarball = CACHE / f"bookworm-{key}.tar"
    if not tarball.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".partial")
        subprocess.run(
            [
                "mmdebstrap",
                "--quiet",
                "--variant=apt",
                "--format=tar",
                f"--include={','.join(('ca-certificates', 'git', *BASE_PACKAGES))}",
                "bookworm",
                str(partial),
            ],
            check=True,
            timeout=900,
        )
        partial.rename(tarball)
    return tarball


class Machine:
    """One booted container in `root` (made and removed by this object)."""

    def __init__(self, root: Path, hostname: str) -> None:
        self.root = root
        self.hostname = hostname
        self.log_path = root.with_suffix(".console")
        self.nspawn: subprocess.Popen[bytes] | None = None

    def prepare(self, repo: Path, download: Sequence[str], build_deps: bool = True) -> None:
        """A new system: the base, a clone of `repo` at /root/<name>, and
        the Debian packages `download` (with the clone's Build-Depends)
        fetched into apt's cache for the offline machine."""
        self.root.mkdir(parents=True)
        subprocess.run(["tar", "-C", str(self.root), "-xf", str(base_tarball())], check=True)
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", self.root / "etc/ssl/certs/")
        (self.root / "etc/hostname").write_text(self.hostname + "\n")
        subprocess.run(
            ["git", "clone", "-q", str(repo), str(self.root / "root" / repo.name)], check=True
        )
        archives = CACHE / "archives"
        (archives / "partial").mkdir(parents=True, exist_ok=True)
        resolv = self.root / "etc/resolv.conf"
        shutil.copy("/etc/resolv.conf", resolv)
        fetch = [
            "apt-get update -qq",
            f"apt-get install -qq --download-only {shlex.join(download)}",
        ]
        if build_deps:
            fetch.append(f"cd /root/{repo.name} && apt-get build-dep -qq --download-only ./")
        self.chroot(" && ".join(fetch), binds={archives: "/var/cache/apt/archives"})
        for deb in archives.glob("*.deb"):
            shutil.copy(deb, self.root / "var/cache/apt/archives")
        # From now on the machine resolves names with the test's DNS server.
        resolv.write_text("nameserver 127.0.0.1\n")

    def chroot(self, script: str, binds: dict[Path, str] | None = None) -> None:
        """Run `script` in the unbooted system, with the host's network."""
        mounts = ['mount -t proc proc "$1/proc"']
        for host, inside in (binds or {}).items():
            mounts.append(f'mount --bind {shlex.quote(str(host))} "$1"{shlex.quote(inside)}')
        subprocess.run(
            [
                "unshare",
                "--mount",
                "--fork",
                "bash",
                "-euc",
                "; ".join(mounts)
                + '; exec chroot "$1" env -i PATH='
                + PATH
                + ' LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive HOME=/root bash -euc "$2"',
                "_",
                str(self.root),
                script,
            ],
            check=True,
            timeout=900,
        )

    def boot(self, timeout: float = 120) -> None:
        """Boot it and wait until systemd says the system is up."""
        with self.log_path.open("ab") as console:
            self.nspawn = subprocess.Popen(
                [
                    "systemd-nspawn",
                    "--quiet",
                    "--boot",
                    "--register=no",
                    "--keep-unit",
                    "--private-network",
                    f"--machine={self.hostname.split('.')[0]}",
                    "--directory",
                    str(self.root),
                ],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
            )
        wait_for(lambda: self._leader() is not None, timeout, "the machine's PID 1")
        wait_for(self._up, timeout, "systemd to finish booting")

    def _leader(self) -> int | None:
        """The machine's PID 1 as the host sees it: nspawn's child."""
        assert self.nspawn is not None
        if self.nspawn.poll() is not None:
            raise RuntimeError(f"systemd-nspawn exited with {self.nspawn.returncode}")
        tasks = Path(f"/proc/{self.nspawn.pid}/task")
        for task in tasks.iterdir():
            with contextlib.suppress(FileNotFoundError):
                children = (task / "children").read_text().split()
                if children:
                    return int(children[0])
        return None

    def _up(self) -> bool:
        state = self.run("systemctl is-system-running", check=False).stdout.strip()
        return state in ("running", "degraded")

    def run(
        self, script: str, *, check: bool = True, timeout: float = 600, cwd: str = "/root"
    ) -> subprocess.CompletedProcess[str]:
        """Run `script` with bash (-eu, pipefail) as root in the booted machine."""
        leader = self._leader()
        assert leader is not None
        command = [
            "nsenter",
            f"--target={leader}",
            "--mount",
            "--uts",
            "--ipc",
            "--net",
            "--pid",
            "env",
            "-i",
            f"PATH={PATH}",
            "LANG=C.UTF-8",
            "HOME=/root",
            "DEBIAN_FRONTEND=noninteractive",
            "bash",
            "-euo",
            "pipefail",
            "-c",
            f"cd {shlex.quote(cwd)}\n{script}",
        ]
        done = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"in the machine, exit status {done.returncode}:\n{script}\n"
                f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
            )
        return done

    def reboot(self, timeout: float = 120) -> None:
        """systemctl reboot, and boot the same system again."""
        assert self.nspawn is not None
        self.run("systemctl reboot", check=False)
        status = self.nspawn.wait(timeout)
        assert status == REBOOTED, f"systemd-nspawn exited with {status}, not {REBOOTED}"
        self.boot(timeout)

    def poweroff(self, timeout: float = 60) -> None:
        """Shut it down (nspawn asks PID 1 to on SIGTERM); kill it if it hangs."""
        if self.nspawn is None or self.nspawn.poll() is not None:
            return
        self.nspawn.send_signal(signal.SIGTERM)
        try:
            self.nspawn.wait(timeout)
        except subprocess.TimeoutExpired:
            self.nspawn.kill()
            self.nspawn.wait(10)

    def remove(self) -> None:
        """The system's directory and console log."""
        if self.root.exists():
            subprocess.run(["rm", "-rf", "--one-file-system", str(self.root)], check=True)
        with contextlib.suppress(FileNotFoundError):
            self.log_path.unlink()

    def console(self) -> str:
        """What the machine printed on its console."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> Machine:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.poweroff()
        finally:
            self.remove()


def usable() -> str | None:
    """Why machines cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("systemd-nspawn", "mmdebstrap", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def wait_until(machine: Machine, script: str, timeout: float, what: str) -> None:
    """Poll `script` in the machine until it succeeds."""
    deadline = time.monotonic() + timeout

    def succeeds() -> bool:
        left = max(1.0, deadline - time.monotonic())
        return machine.run(script, check=False, timeout=left).returncode == 0

    wait_for(succeeds, timeout, what)
