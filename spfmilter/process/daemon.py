"""The runtime: logging, privileges, the config holder and its reload thread.

This module owns process-wide state and the order it is set up in: logging
handlers, signal masks (before any thread starts), the metrics listener,
the socket's directory and mode, dropping root, libmilter's listening socket
(opened once, before workers fork, or the one the service manager passed),
the evaluator installed into pyspf, the SIGUSR1 reload thread, readiness
for the service manager, serving (milterloop), and a stop that lets
the callbacks in progress finish (and, on a socket that outlives the
process, the MTA connections).
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import gc
import logging
import logging.handlers
import os
import signal
import socket
import sys
import threading
from types import TracebackType

from spfmilter.config.loading import EX_CONFIG, ConfigError, load_config
from spfmilter.config.orgdomain import PublicSuffixes
from spfmilter.config.schema import Config
from spfmilter.core.metrics import Metrics
from spfmilter.core.session import Services
from spfmilter.evaluation import evaluator, rescuewarmup, warmup
from spfmilter.mta import libmilter
from spfmilter.process import activation, logs, milterloop, privileges, workers
from spfmilter.process.exporter import Listener
from spfmilter.process.workers import worker_count

log = logging.getLogger("spfmilter.daemon")

# The program's name in the system log.
PROGRAM = "spfmilter"
# How long a stop waits for callbacks in progress: above [dns] lookup_time's
# default, so a transaction waiting on DNS still gets its answer.
STOP_GRACE = 25.0
# How long a stop on a socket that outlives the process waits for the MTA's
# open connections: new ones wait in the backlog meanwhile, and Postfix
# gives up on a milter after milter_connect_timeout (30 s by default), so
# that the next process must be serving well before.
DRAIN_GRACE = 15.0


# glibc's mallopt(M_ARENA_MAX): libmilter serves each connection on a
# thread of its own, and glibc gives threads malloc arenas of their own (up
# to 8 per CPU) whose freed memory the other arenas do not reuse.  With full
# caches a worker grew from 52 to 59 MiB between 100,000 and 200,000
# transactions and kept growing; with two arenas it stayed at 42-45 MiB.
M_ARENA_MAX = -8
MALLOC_ARENAS = 2


def _limit_malloc_arenas() -> None:
    """Two malloc arenas per process, unless MALLOC_ARENA_MAX says otherwise
    (glibc reads it itself).  Before any thread starts: arenas already made
    stay."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except AttributeError:
        return  # not glibc: its own allocator
    mallopt(M_ARENA_MAX, MALLOC_ARENAS)


# Sections set up once per process (socket, privileges, resolver, log
# handler, listener): a reload keeps them.
RESTART_SECTIONS = ("milter", "dns", "log", "metrics")


def _listen(spec: str, passed: socket.socket | None) -> int:
    """Open libmilter's listening socket on `spec`, or serve on the socket
    the service manager `passed` (before forking workers, which all accept
    from it); a stale socket left by a crash is removed.  Returns its
    descriptor."""
    libmilter.register()
    if passed is not None:
        descriptor = activation.adopt(passed, libmilter.open_socket)
    else:
        descriptor = activation.opened_by(libmilter.open_socket, spec)
    with socket.socket(fileno=os.dup(descriptor)) as listening:
        # Every worker's listener waits in poll() on this one socket, and a
        # connection wakes them all; those that lose the race to accept it
        # would block in accept() until the next connection, holding the
        # listener's lock and never seeing a stop.  Non-blocking, their
        # accept() fails with EAGAIN, which libmilter's listener takes as
        # "poll again" without counting it as a failure.  Linux does not
        # pass O_NONBLOCK on to accepted sockets: the connections stay
        # blocking, as libmilter expects.
        listening.setblocking(False)
        if listening.family != socket.AF_UNIX:
            # Sockets accepted from it inherit TCP_NODELAY on Linux:
            # libmilter writes a header change and its reply as separate
            # small packets, and with Nagle's algorithm the second waits for
            # the MTA's delayed ACK, about 40 ms per message.
            listening.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return descriptor


class ConfigHolder:
    """The current Config, swapped atomically by a reload.

    Connections read `config` once when they open (a snapshot); assigning
    an attribute is atomic, so readers never see a half-made config.
    """

    def __init__(
        self,
        config: Config,
        path: str | None,
        socket_override: str | None,
        metrics: Metrics,
        *,
        worker: int | None = None,
    ) -> None:
        self._config = config
        self.path = path
        self.socket_override = socket_override
        self._metrics = metrics
        # A forked worker's holder (its slot): the supervisor, which re-reads
        # the file first, reports errors, warnings and the reload count once;
        # each worker says only when the new values are in use.
        self._worker = worker

    @property
    def config(self) -> Config:
        """The configuration new connections use."""
        return self._config

    def reload(self) -> bool:
        """Re-read the file; on any error keep the old config and say why."""
        say = log.log if self._worker is None else _quietly
        try:
            new = load_config(self.path)
        except ConfigError as error:
            if self._worker is None:
                self._metrics.reloads.labels("failed").inc()
            say(logging.ERROR, "reload failed, keeping the previous configuration: %s", error)
            return False
        # The socket, privileges, resolver and listeners are set up once.
        old = self._config
        if self.socket_override is not None:
            new = with_socket(new, self.socket_override)
        changed = [name for name in RESTART_SECTIONS if getattr(new, name) != getattr(old, name)]
        if changed:
            say(
                logging.WARNING,
                "changes to %s take effect at the next restart; the running values stay",
                ", ".join(f"[{name}]" for name in changed),
            )
        new = dataclasses.replace(new, **{name: getattr(old, name) for name in RESTART_SECTIONS})
        for warning in new.warnings:
            say(logging.WARNING, "%s", warning)
        self._config = new
        source = self.path or "built-in defaults"
        if self._worker is None:
            self._metrics.reloads.labels("ok").inc()
            log.info("configuration reloaded from %s", source)
        else:
            log.info("worker %d: configuration reloaded from %s", self._worker, source)
        return True


def _quietly(level: int, message: str, *args: object) -> None:
    log.debug(message, *args)


def with_socket(config: Config, socket: str) -> Config:
    """`config` listening on `socket` instead (the --socket option)."""
    return dataclasses.replace(config, milter=dataclasses.replace(config.milter, socket=socket))


def _uncaught(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    """sys.excepthook: pymilter reports here what fails in its C module
    before a callback runs, such as text from the MTA that is not UTF-8."""
    if isinstance(value, UnicodeDecodeError) and tb is None:
        log.warning(
            "the MTA sent text that is not UTF-8 (%r); pymilter skipped that callback",
            bytes(value.object[:80]),
        )
    else:
        log.error("uncaught exception", exc_info=(kind, value, tb))


def _reload_loop(holder: ConfigHolder) -> None:
    while True:
        signal.sigwait({signal.SIGUSR1})
        holder.reload()


def run(config: Config, path: str | None, socket_override: str | None = None) -> int:
    """Run the milter in the foreground until SIGTERM, SIGINT or SIGHUP."""
    _limit_malloc_arenas()
    if socket_override is not None:
        config = with_socket(config, socket_override)
    logs.setup_logging(config, PROGRAM)
    for warning in config.warnings:
        log.warning("%s", warning)
    # Python signal handlers cannot run while libmilter blocks in C, and
    # threads inherit the mask: block the signals here, before any thread
    # starts.  In a worker, SIGUSR1 is taken with sigwait() by our reload
    # thread, and SIGTERM, SIGINT and SIGHUP by MilterLoop, which stops the
    # milter, as libmilter's own signal thread would (so HUP cannot mean
    # reload); a supervisor takes them all with sigwaitinfo().  Only the
    # thread of libmilter's loop (and those libmilter starts) unblocks WAKE.
    signal.pthread_sigmask(signal.SIG_BLOCK, workers.SUPERVISED | {milterloop.WAKE})
    signal.signal(milterloop.WAKE, milterloop.woken)
    notifier = activation.Notifier.from_environ(os.environ)
    try:
        passed = activation.passed_socket(os.environ)
    except activation.ActivationError as error:
        log.error("%s", error)
        return 1
    try:
        account, warnings = privileges.choose_account(config.milter)
        if path is not None:
            privileges.check_config_file(path, account)
        # A passed socket was made by the service manager, with its owner
        # and mode: the daemon makes no socket and no directory.
        if passed is None:
            warnings += privileges.prepare_socket(config.milter, account)
    except ConfigError as error:
        log.error("%s", error)
        return EX_CONFIG
    except OSError as error:
        log.error("cannot prepare the socket %s: %s", config.milter.socket, error)
        return 1
    for warning in warnings:
        log.warning("%s", warning)
    # Everything a transaction could load lazily is loaded now, while the
    # installation is still readable (one under /root, mode 0700, is not to
    # the unprivileged user).
    warmup.exercise(config.dns.void_lookup_limit)
    # The rescue's DKIM and ARC code too (dkimpy, PyNaCl, the hash and codec
    # modules they load on first use), whether or not [rescue] is on: a
    # reload may turn it on (about 15 ms).
    rescuewarmup.exercise(config.suffixes or PublicSuffixes(problem="not configured"))
    count = worker_count(config.milter.workers, os.cpu_count())
    # One slot per worker, and one for the supervisor's own counts.
    metrics = Metrics(slots=count + 1)
    # What the workers use is made now too, for the same reason: it reads
    # the system's files (the nameservers of /etc/resolv.conf, the host's
    # name) and may load codecs or modules.  Each worker gets a copy when it
    # forks, so that a worker's start reads nothing.
    shared = Services(evaluator.build(config.dns, metrics), metrics, host_name=socket.getfqdn())
    if account is not None:
        privileges.drop_privileges(account)
    spec = config.milter.socket
    if passed is not None:
        spec = f"{activation.describe(passed)} (passed by the service manager)"
    try:
        descriptor = _listen(config.milter.socket, passed)
    except (libmilter.LibmilterError, activation.ActivationError) as error:
        log.error("cannot listen on %s: %s", spec, error)
        return 1
    # Opened as the unprivileged user: nothing but the milter socket's
    # directory needs root.
    listener = None
    if config.metrics.address is not None:
        host, port = config.metrics.address
        try:
            listener = Listener(metrics, host, port)
        except OSError as error:
            log.error("cannot listen for metrics on %s: %s", config.metrics.listen, error)
            return 1
    source = path or "built-in defaults"
    log.info(
        "spfmilter starting: socket=%s config=%s uid=%d workers=%d",
        spec,
        source,
        os.getuid(),
        count,
    )
    warmup.ImportWatch().install()
    sys.excepthook = _uncaught
    # What is loaded now is shared with the workers; the collector leaves it
    # alone, so that their pages stay shared (copy-on-write).
    gc.freeze()
    holder = ConfigHolder(config, path, socket_override, metrics)
    # A socket the service manager holds outlives this process: a stop then
    # drains it (activation.drain), so that a restart loses no MTA connection.
    worker = Worker(holder, shared, metrics, count, descriptor if passed is not None else None)
    if listener is not None:
        listener.start()
    # The socket listens: connections from now on wait in its backlog
    # until a worker accepts them.
    notifier.ready(f"serving on {spec} with {count} worker(s)")
    if count == 1:
        status = worker.serve(0, holder)
    else:
        metrics.use_slot(count)
        supervisor = workers.Supervisor(
            worker.forked,
            count,
            on_exit=metrics.retire_slot,
            stop_grace=DRAIN_GRACE + STOP_GRACE + milterloop.LIBMILTER_POLL,
            on_reload=holder.reload,
        )
        status = supervisor.run()
    notifier.stopping()
    log.info("spfmilter stopped: config=%s", source)
    return status


@dataclasses.dataclass
class Worker:
    """What one process serving the socket runs (the only one, or a forked
    worker): its services, a reload thread, and libmilter's main loop until
    a stop."""

    holder: ConfigHolder
    shared: Services
    metrics: Metrics
    count: int
    # libmilter's listening descriptor, when a stop is to drain it.
    drain_from: int | None = None

    def forked(self, slot: int) -> int:
        """serve() in a forked worker, with a holder of its own, starting
        from the supervisor's current configuration (the metrics listener
        let go of its descriptors in the fork)."""
        main = self.holder
        holder = ConfigHolder(
            main.config, main.path, main.socket_override, self.metrics, worker=slot
        )
        return self.serve(slot, holder)

    def serve(self, slot: int, holder: ConfigHolder) -> int:
        """Serve until libmilter stops; the exit status."""
        self.metrics.use_slot(slot)
        shared = self.shared.for_worker(slot, self.count)
        threading.Thread(target=_reload_loop, args=(holder,), name="reload", daemon=True).start()
        activity = libmilter.Activity()
        make = libmilter.factory(holder, shared, activity)
        try:
            milterloop.MilterLoop(functools.partial(libmilter.serve, make), self._drain).run()
        except libmilter.LibmilterError as error:
            log.error("cannot run the milter on %s: %s", holder.config.milter.socket, error)
            return 1
        # libmilter has stopped accepting; let callbacks in progress answer.
        if not activity.wait_idle(STOP_GRACE):
            log.warning("stopping with callbacks still running after %g s", STOP_GRACE)
        return 0

    def _drain(self) -> None:
        """Before libmilter stops: on a socket that outlives this process,
        accept no more and let the MTA connections already accepted finish
        (Debian's libmilter, once stopped, serves no open session: its mail
        would be deferred), while new ones wait in the socket's backlog for
        the next process."""
        if self.drain_from is None:
            return
        log.info("draining: accepting no more connections")
        if not activation.drain(self.drain_from, DRAIN_GRACE):
            log.warning("stopping with MTA connections still open after %g s", DRAIN_GRACE)
