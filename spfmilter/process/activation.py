"""The service manager's side of the daemon: a passed socket and readiness.

This module owns the two protocols systemd speaks to a service, both
optional.  Socket activation (sd_listen_fds(3): LISTEN_PID, LISTEN_FDS,
descriptors from 3): systemd holds the listening socket across restarts and
package upgrades, so the MTA's connections wait in its backlog instead of
being refused, and systemd, not the daemon, creates the socket with its
owner and mode (in Postfix's chroot, which the hardened unit may not
write).  Readiness (sd_notify(3): datagrams to NOTIFY_SOCKET): "systemctl
start" and "restart" return once the daemon serves, and fail when it
cannot.  Without these variables nothing changes.

It also owns the stop that a restart needs to be invisible: drain() makes
a process stop accepting while its MTA connections finish, so that the
next process takes every new connection from the same socket.  libmilter
cannot do that itself: once asked to stop, Debian's libmilter (built with
its pool of worker threads) no longer serves the sessions it has, and the
MTA defers their mail.

libmilter has no call that takes an open descriptor: adopt() lets it open
a socket of the same family on a private address and puts the passed one
in its place (dup2), so libmilter's own checks (the family of accepted
clients) and its clean-up at stop see what they expect.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path

log = logging.getLogger("spfmilter.activation")

# sd_listen_fds(3): passed descriptors start here.
LISTEN_FDS_START = 3
# How often a draining process looks for connections still open (seconds).
DRAIN_POLL = 0.05
_LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class ActivationError(Exception):
    """The service manager passed something the daemon cannot serve on."""


def passed_socket(environ: MutableMapping[str, str]) -> socket.socket | None:
    """The listening socket systemd passed to this process, or None.

    The variables are removed (sd_listen_fds' unset_environment), so that
    nothing started later takes them for its own.
    """
    pid = environ.get("LISTEN_PID")
    count = environ.get("LISTEN_FDS")
    for name in _LISTEN_VARIABLES:
        environ.pop(name, None)
    if pid != str(os.getpid()) or count is None:
        return None
    if count != "1":
        raise ActivationError(
            f"the service manager passed {count} sockets; spfmilter serves exactly one "
            "(one ListenStream= in spfmilter.socket)"
        )
    try:
        info = os.fstat(LISTEN_FDS_START)
    except OSError as error:
        raise ActivationError(f"the passed descriptor {LISTEN_FDS_START}: {error}") from None
    if not stat.S_ISSOCK(info.st_mode):
        raise ActivationError(f"the passed descriptor {LISTEN_FDS_START} is not a socket")
    sock = socket.socket(fileno=LISTEN_FDS_START)
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()
        raise ActivationError(
            "the passed socket is not a listening stream socket (ListenStream=, Accept=no)"
        )
    sock.set_inheritable(False)
    return sock


def describe(sock: socket.socket) -> str:
    """`sock`'s address in milter notation: unix:/path, inet:PORT@HOST,
    inet6:PORT@[HOST]."""
    address = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{address.decode() if isinstance(address, bytes) else address}"
    if sock.family == socket.AF_INET6:
        return f"inet6:{address[1]}@[{address[0]}]"
    return f"inet:{address[1]}@{address[0]}"


def adopt(passed: socket.socket, open_socket: Callable[[str], None]) -> int:
    """Make libmilter serve on `passed`: `open_socket(spec)` opens
    libmilter's listening socket on a private address of the same family,
    whose descriptor then becomes a copy of `passed` (closed here).
    Returns that descriptor."""
    scratch = None
    if passed.family == socket.AF_UNIX:
        scratch = Path(tempfile.mkdtemp(prefix="spfmilter-"))
        private = f"unix:{scratch / 'adopt.sock'}"
    elif passed.family == socket.AF_INET6:
        private = "inet6:0@[::1]"
    else:
        private = "inet:0@127.0.0.1"
    try:
        target = opened_by(open_socket, private)
        os.dup2(passed.fileno(), target, inheritable=False)
    finally:
        passed.close()
        if scratch is not None:
            # libmilter removes its socket file at stop only if it is still
            # there: with the file gone, it leaves the passed socket alone.
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def opened_by(open_socket: Callable[[str], None], spec: str) -> int:
    """The descriptor of the listening socket `open_socket(spec)` opens
    (libmilter does not tell)."""
    before = _listening()
    open_socket(spec)
    opened = _listening() - before
    if len(opened) != 1:
        raise ActivationError(f"cannot find libmilter's socket on {spec}")
    return opened.pop()


def drain(listener: int, grace: float) -> bool:
    """Stop accepting on the descriptor `listener` and wait up to `grace`
    seconds for the MTA connections accepted from it to close; False if
    some were still open.  libmilter is stopped afterwards.

    The listening socket itself stays open elsewhere (in the service
    manager, or in the next process), so new connections wait in its
    backlog instead of being refused.  libmilter's listener keeps polling
    the same descriptor number, which from now on holds a socket nobody can
    reach: non-blocking, so an accept() that a connection to the real
    socket woke (a poll begun before the swap) returns at once.
    """
    with socket.socket(fileno=os.dup(listener)) as real:
        address = real.getsockname()
        family = real.family
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unreachable:
        unreachable.bind("")  # an address of its own in the abstract namespace
        unreachable.listen(1)
        unreachable.setblocking(False)
        os.dup2(unreachable.fileno(), listener, inheritable=False)
    deadline = time.monotonic() + grace
    while (left := _accepted_from(family, address)) and time.monotonic() < deadline:
        time.sleep(DRAIN_POLL)
    return not left


def _accepted_from(family: int, address: object) -> int:
    """How many of this process's sockets are connections accepted from a
    listening socket at `address` (they share its local address)."""
    count = 0
    for fd in _sockets():
        try:
            with socket.socket(fileno=os.dup(fd)) as sock:
                if (
                    sock.family == family
                    and sock.type == socket.SOCK_STREAM
                    and not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                    and sock.getsockname() == address
                ):
                    count += 1
        except OSError:
            continue  # closed meanwhile
    return count


def _sockets() -> list[int]:
    """This process's descriptors that are sockets."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                found.append(int(name))
        except OSError:
            continue  # closed meanwhile (the directory's own descriptor)
    return found


def _listening() -> set[int]:
    """This process's descriptors that are listening sockets."""
    found = set()
    for fd in _sockets():
        try:
            with socket.socket(fileno=os.dup(fd)) as candidate:
                if candidate.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    found.add(fd)
        except OSError:
            continue  # closed meanwhile
    return found


class Notifier:
    """Readiness and status for the service manager (sd_notify(3)); says
    nothing when it was not started with NOTIFY_SOCKET."""

    def __init__(self, address: str | None) -> None:
        # An address starting with "@" is in the abstract namespace.
        self._address = "\0" + address[1:] if address and address[0] == "@" else address

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str]) -> Notifier:
        """The notifier systemd asked for; NOTIFY_SOCKET is removed, so
        that no process started later speaks for this one."""
        return cls(environ.pop("NOTIFY_SOCKET", None))

    def ready(self, status: str) -> None:
        """The daemon serves: "systemctl start" may return."""
        self._send(f"READY=1\nSTATUS={status}\nMAINPID={os.getpid()}")

    def stopping(self) -> None:
        """The daemon has begun to stop."""
        self._send("STOPPING=1")

    def _send(self, message: str) -> None:
        if self._address is None:
            return
        try:
            with contextlib.closing(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)) as sock:
                sock.sendto(message.encode(), self._address)
        except OSError as error:
            log.warning("cannot notify the service manager at %s: %s", self._address, error)
