"""A private, throwaway Postfix instance on loopback for integration tests.

This module owns everything needed to put a real Postfix in front of the milter
under test: building a self-contained configuration under a caller-supplied
work directory (config, queue, data, log and one Maildir), starting and
stopping that instance's master process and nothing else, and the client-side
helpers tests use to pose as arbitrary SMTP clients via XCLIENT and to read the
delivered mail back.  It never touches the system Postfix in /etc/postfix.

Postfix must be installed (Debian layout) and the tests must run as root,
because the master process starts as root and drops to the ``postfix`` user.
"""

from __future__ import annotations

import email.parser
import email.policy
import grp
import ipaddress
import os
import pwd
import re
import shutil
import signal
import smtplib
import stat
import subprocess
import time
from collections.abc import Mapping
from email.message import Message
from pathlib import Path
from types import TracebackType
from typing import Self

from testkit import processes
from testkit.net import free_port, tcp_listening

POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
# Debian ships pristine upstream templates here; /etc/postfix may not even
# have a main.cf when the package was installed with "No configuration".
TEMPLATE_DIR = Path("/usr/share/postfix")

# Mail is delivered as an account unrelated to Postfix itself; its uid must be
# at least virtual_minimum_uid (100), which rules out root.
DELIVERY_USER = "nobody"
DELIVERY_GROUP = "nogroup"

# main.cf.dist sets these to "" for packagers to fill in; postfix check
# rejects the empty values, so they revert to the compiled-in defaults.
_DIST_PLACEHOLDERS = (
    "sendmail_path",
    "newaliases_path",
    "mailq_path",
    "setgid_group",
    "html_directory",
    "manpage_directory",
    "sample_directory",
    "readme_directory",
)

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
POLL_INTERVAL = 0.05
LOG_TAIL_LINES = 40

# Postfix log lines look like "Mon DD HH:MM:SS host prog[pid]: severity: ...".
_PROBLEM_LINE = re.compile(r"\]: (?:warning|error|fatal|panic): ")
# /proc/net/tcp{,6} state code for a listening socket.


def _xtext(value: str) -> str:
    """Encode an XCLIENT attribute value as RFC 3461 xtext, as Postfix expects."""
    return "".join(
        ch if 33 <= ord(ch) <= 126 and ch not in "+=" else f"+{ord(ch):02X}" for ch in value
    )


def _searchable_by(path: Path, uid: int, gid: int) -> bool:
    """Tell whether uid/gid may traverse ``path`` (a directory), by mode bits."""
    st = path.stat()
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


class PrivatePostfix:
    """One Postfix instance living entirely under ``workdir``.

    ``milter`` is in Postfix notation (``inet:127.0.0.1:PORT`` or
    ``unix:/path/sock``), or None to run without a milter.  ``extra`` holds
    main.cf parameters applied last, overriding the defaults chosen here.
    """

    def __init__(
        self,
        workdir: Path,
        milter: str | None,
        *,
        myhostname: str = "mx.test.example",
        extra: Mapping[str, str] | None = None,
        chroot_smtpd: bool = False,
    ) -> None:
        # Postfix requires absolute paths, and maillog_file_prefixes is a
        # plain string prefix match, so symlinks must be resolved up front.
        self.workdir = workdir.resolve()
        self.milter = milter
        self.myhostname = myhostname
        self.extra: dict[str, str] = dict(extra or {})
        # smtpd chrooted in the queue directory, as Debian runs it: a unix
        # milter socket is then named relative to the queue directory.
        self.chroot_smtpd = chroot_smtpd
        self.smtp_port = free_port()
        # A second smtpd, as Debian's master.cf "submission" entry sets it
        # up: the milter sees {daemon_name} = ORIGINATING there.
        self.submission_port = free_port()
        self.config_dir = self.workdir / "etc"
        self.queue_dir = self.workdir / "queue"
        self.data_dir = self.workdir / "data"
        self.maildir = self.workdir / "Maildir"
        self.log_path = self.workdir / "maillog"

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Build the instance and return once its SMTP port is listening."""
        self.config_dir.mkdir(parents=True)
        # postfix start creates the queue's subdirectories with Postfix's
        # ownership and modes, but not the queue directory itself.
        self.queue_dir.mkdir()
        for name in ("main.cf", "master.cf"):
            shutil.copyfile(TEMPLATE_DIR / f"{name}.dist", self.config_dir / name)
        self._prepare_maildir()
        self._configure_main()
        self._configure_master()
        # Postfix rereads a main.cf modified within the last two seconds every
        # 300 ms until it "cools down", which would cost each start ~2 s.  The
        # file is complete, so backdating it is safe.
        cooled = time.time() - 10
        os.utime(self.config_dir / "main.cf", (cooled, cooled))
        # postfix reports problems on stderr only when that is a terminal, but
        # fatal errors also land in the maillog, which _run quotes.
        self._run(POSTFIX, "-c", str(self.config_dir), "start")
        self._wait_until_listening()

    def stop(self) -> None:
        """Stop this instance's master and wait until that process is gone.

        Safe to call when start() failed halfway or the instance is already
        stopped: without a running master of our own there is nothing to do,
        and running ``postfix stop`` anyway would log a spurious fatal line.
        """
        pid = self._master_pid()
        if pid is None:
            return
        subprocess.run(
            [POSTFIX, "-c", str(self.config_dir), "stop"],
            capture_output=True,
            check=False,
            timeout=STOP_TIMEOUT,
        )
        # postfix stop already escalates to SIGKILL after about five seconds;
        # this is a last resort aimed at the one PID we verified is ours.
        if not self._wait_master_gone(pid, STOP_TIMEOUT):
            os.kill(pid, signal.SIGKILL)
            if not self._wait_master_gone(pid, STOP_TIMEOUT):
                raise RuntimeError(f"Postfix master {pid} survived SIGKILL")

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            # __exit__ is not called when __enter__ raises.
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- SMTP client side --------------------------------------------------

    def connect(
        self,
        client_ip: str,
        helo: str,
        *,
        client_name: str = "[UNAVAILABLE]",
        login: str | None = None,
        submission: bool = False,
    ) -> smtplib.SMTP:
        """Open an SMTP session posing as ``client_ip``/``helo`` via XCLIENT.

        Returns the session after the post-XCLIENT EHLO, ready for MAIL FROM.
        ``login`` poses as a client that authenticated with SASL as that
        user (XCLIENT LOGIN; milters see it as {auth_authen}).
        ``submission`` connects to the second smtpd, whose
        milter_macro_daemon_name is ORIGINATING.
        Use one session per posed client: Postfix allows XCLIENT only once.
        A refused XCLIENT or EHLO (e.g. the milter rejecting at connect or
        HELO) raises smtplib.SMTPResponseException carrying the reply.
        """
        ip = ipaddress.ip_address(client_ip)
        addr = f"IPV6:{ip}" if ip.version == 6 else str(ip)
        port = self.submission_port if submission else self.smtp_port
        smtp = smtplib.SMTP("127.0.0.1", port, timeout=60)
        try:
            smtp.ehlo("xclient.invalid")
            if not smtp.has_extn("xclient"):
                raise RuntimeError("Postfix does not offer XCLIENT to 127.0.0.1")
            pairs = [("ADDR", addr), ("NAME", client_name), ("HELO", helo)]
            if login is not None:
                pairs.append(("LOGIN", login))
            attrs = " ".join(f"{key}={_xtext(val)}" for key, val in pairs)
            code, reply = smtp.docmd("XCLIENT", attrs)
            if code != 220:
                raise smtplib.SMTPResponseException(code, reply)
            code, reply = smtp.ehlo(helo)
            if code != 250:
                raise smtplib.SMTPHeloError(code, reply)
        except BaseException:
            smtp.close()
            raise
        return smtp

    # -- delivered mail ----------------------------------------------------

    def raw_message(self, marker: str, timeout: float = 20) -> bytes:
        """Wait for a delivered message containing ``marker``; return its bytes."""
        needle = marker.encode()
        new_dir = self.maildir / "new"
        deadline = time.monotonic() + timeout
        while True:
            for path in sorted(new_dir.iterdir()):
                raw = path.read_bytes()
                if needle in raw:
                    return raw
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"no message containing {marker!r} in {new_dir} after "
                    f"{timeout}s\n{self._log_tail()}"
                )
            time.sleep(POLL_INTERVAL)

    def wait_for_message(self, marker: str, timeout: float = 20) -> Message:
        """Like raw_message(), parsed with headers kept in their raw order."""
        raw = self.raw_message(marker, timeout)
        parser = email.parser.BytesParser(policy=email.policy.compat32)
        return parser.parsebytes(raw)

    # -- log ---------------------------------------------------------------

    def log_text(self) -> str:
        """The whole maillog so far ("" before Postfix wrote anything)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def warnings(self) -> list[str]:
        """Maillog lines Postfix logged as warning, error, fatal or panic."""
        return [line for line in self.log_text().splitlines() if _PROBLEM_LINE.search(line)]

    # -- internals ---------------------------------------------------------

    def _main_settings(self) -> dict[str, str]:
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.workdir),
            "myhostname": self.myhostname,
            # Only the virtual domains below are local destinations.
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            # The listener stays on IPv4 loopback, but smtpd refuses XCLIENT
            # ADDR=IPV6:... unless IPv6 is an enabled protocol.
            "inet_protocols": "all",
            "mynetworks": "127.0.0.0/8",
            "smtpd_authorized_xclient_hosts": "127.0.0.0/8",
            # Posed clients are outside mynetworks; they may still mail the
            # virtual domains, which reject_unauth_destination lets through.
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_recipient_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_helo_required": "no",
            "virtual_mailbox_domains": "example.net, test.example",
            "virtual_mailbox_base": str(self.workdir),
            # The trailing slash selects Maildir format; every recipient
            # shares the one mailbox.
            "virtual_mailbox_maps": f"static:{self.maildir.name}/",
            "virtual_uid_maps": f"static:{pwd.getpwnam(DELIVERY_USER).pw_uid}",
            "virtual_gid_maps": f"static:{grp.getgrnam(DELIVERY_GROUP).gr_gid}",
            # No /etc/aliases lookups: nothing is delivered by local(8).
            "alias_maps": "",
            "alias_database": "",
            # Nothing may leave the box or consult DNS.
            "relayhost": "",
            "default_transport": "error",
            "smtp_dns_support_level": "disabled",
            "smtpd_peername_lookup": "no",
        }
        if self.milter is not None:
            # Milter macro lists stay at Postfix's defaults on purpose, so the
            # milter is tested against what a stock installation sends.
            settings |= {
                "smtpd_milters": self.milter,
                # A broken milter must show up as 4xx, never as a silent accept.
                "milter_default_action": "tempfail",
                "milter_protocol": "6",
                "milter_connect_timeout": "10s",
                "milter_command_timeout": "30s",
                "milter_content_timeout": "30s",
            }
        return settings | self.extra

    def _configure_main(self) -> None:
        self._postconf("-X", *_DIST_PLACEHOLDERS)
        settings = self._main_settings()
        self._postconf("-e", *(f"{name}={value}" for name, value in settings.items()))

    def _configure_master(self) -> None:
        # A chroot would need copies of /etc files inside the queue directory.
        self._postconf("-F", "*/*/chroot=n")
        listener = f"127.0.0.1:{self.smtp_port}"
        chroot = "y" if self.chroot_smtpd else "n"
        self._postconf("-M", f"{listener}/inet={listener} inet n - {chroot} - - smtpd")
        submission = f"127.0.0.1:{self.submission_port}"
        self._postconf(
            "-M",
            f"{submission}/inet={submission} inet n - {chroot} - - smtpd"
            " -o milter_macro_daemon_name=ORIGINATING",
        )
        self._postconf("-MX", "smtp/inet")

    def _postconf(self, *args: str) -> None:
        self._run(POSTCONF, "-c", str(self.config_dir), *args)

    def _prepare_maildir(self) -> None:
        """Create the shared Maildir owned by the delivery account.

        virtual(8) writes it after switching to that account, so every
        directory above it must be searchable by that account too; pytest's
        0700 base temp directory, for one, is not.  Fail early and clearly
        instead of with a deferred delivery and a timeout.
        """
        uid = pwd.getpwnam(DELIVERY_USER).pw_uid
        gid = grp.getgrnam(DELIVERY_GROUP).gr_gid
        self.workdir.chmod(0o755)
        blocked = [
            p for p in (self.workdir, *self.workdir.parents) if not _searchable_by(p, uid, gid)
        ]
        if blocked:
            raise RuntimeError(
                f"{DELIVERY_USER} cannot reach {self.maildir}: no search permission "
                f"on {blocked[0]}; use a workdir below a world-searchable directory"
            )
        for path in (
            self.maildir,
            *(self.maildir / sub for sub in ("new", "cur", "tmp")),
        ):
            path.mkdir(mode=0o700)
            os.chown(path, uid, gid)

    def _run(self, *argv: str) -> None:
        try:
            processes.run(argv, timeout=START_TIMEOUT)
        except processes.CommandFailed as failed:
            raise processes.CommandFailed(f"{failed}{self._log_tail()}") from None

    def _wait_until_listening(self) -> None:
        # Readiness is read from the kernel's socket table instead of probing
        # with a connection: a probe would be a real SMTP session, reaching
        # the milter (or logging milter warnings if it is not up yet).
        deadline = time.monotonic() + START_TIMEOUT
        while not self._port_listening():
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"Postfix did not listen on 127.0.0.1:{self.smtp_port} within "
                    f"{START_TIMEOUT}s\n{self._log_tail()}"
                )
            time.sleep(POLL_INTERVAL)

    def _port_listening(self) -> bool:
        return tcp_listening(self.smtp_port) and tcp_listening(self.submission_port)

    def _master_pid(self) -> int | None:
        """PID of this instance's running master, or None.

        The PID file alone is not proof: after a crash the number may belong
        to an unrelated process.  Postfix's master runs with the queue
        directory as its working directory, which identifies our instance.
        """
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None
        return pid if self._is_our_master(pid) else None

    def _is_our_master(self, pid: int) -> bool:
        # readlink fails for vanished processes and for zombies alike.
        try:
            return Path(os.readlink(f"/proc/{pid}/cwd")) == self.queue_dir
        except OSError:
            return False

    def _wait_master_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._is_our_master(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_INTERVAL)
        return True

    def _log_tail(self) -> str:
        lines = self.log_text().splitlines()[-LOG_TAIL_LINES:]
        return f"--- last lines of {self.log_path} ---\n" + "\n".join(lines)
