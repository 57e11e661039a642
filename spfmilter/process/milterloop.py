"""libmilter's main loop, run so that a stop signal ends it at once.

This module owns how a process serving the milter waits for SIGTERM, SIGINT
and SIGHUP while libmilter's listener runs on a thread of its own, and how
that listener, which looks at its stop flag only when its poll() returns,
is woken to see it.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from spfmilter.mta import libmilter
from spfmilter.process import workers

log = logging.getLogger("spfmilter.daemon")

# libmilter's listener looks for a stop request when its poll() returns: at
# once for a connection, else within this many seconds.  MilterLoop wakes it
# at once; this is the longest a stop can wait when libmilter's own signal
# thread took the stop signal instead.
LIBMILTER_POLL = 5.0
# A signal that only interrupts libmilter's listener where it waits (see
# MilterLoop), and the seconds between two while a stop waits for it.
WAKE = signal.SIGUSR2
WAKE_INTERVAL = 0.02
# How often libmilter's loop, about to start, looks whether the main thread
# waits for the stop signals yet (it does within microseconds, unless the
# machine is loaded).
GATE_INTERVAL = 0.001


def woken(signum: int, frame: FrameType | None) -> None:
    """WAKE's handler: nothing to do.  A signal that is caught (one that is
    ignored would be discarded) makes the poll() it lands in return."""


def waits_for_stop(task: int) -> bool:
    """Whether thread `task` of this process waits for SIGTERM in sigwait().

    While a thread is in sigwait() (sigtimedwait(2)), Linux takes the
    signals it waits for out of its blocked mask, and /proc shows that mask
    (SigBlk): outside sigwait() the daemon's threads block SIGTERM.  True
    when /proc cannot tell: the loop then starts as it did before there
    was a way to know."""
    try:
        # Bytes: decoding text could import a codec, after the drop of root.
        with open(f"/proc/self/task/{task}/status", "rb") as status:
            for line in status:
                if line.startswith(b"SigBlk:"):
                    return not int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1
    except OSError:
        pass
    return True


class MilterLoop:
    """libmilter's main loop on a thread of its own, stopped without delay.

    libmilter's listener looks at its stop flag only when its poll() on the
    listening socket returns: for a connection, or every 5 s; libmilter's
    signal thread, which takes SIGTERM, SIGINT and SIGHUP, only sets that
    flag.  So the process's main thread, in run(), waits for those signals
    itself (the kernel offers a signal sent to a process to its main thread
    first when that thread waits for it), sets the flag (smfi_stop) and has
    the listener's poll() interrupted with WAKE until the loop has returned.
    Should libmilter's thread take the signal after all, the loop ends at
    the listener's next wake-up, as it always did, and says so with WAKE.
    """

    def __init__(self, serve: Callable[[], None], drain: Callable[[], None]) -> None:
        self._serve = serve
        self._drain = drain
        self._waiting = 0  # the thread in run(), and its task id for /proc
        self._waiting_task = 0
        # Set when the loop may begin, and whether it is to serve at all.
        self._begin = threading.Event()
        self._serving = False
        self._ended = threading.Event()
        # Set once nothing sends WAKE to the loop's thread any more, which
        # must not end before: signalling a thread that ended is undefined.
        self._released = threading.Event()
        self._stopping = threading.Event()  # run() took a stop signal
        self._failure: BaseException | None = None

    def run(self) -> None:
        """Serve until a stop signal; raises what the loop raised."""
        self._waiting = threading.get_ident()
        self._waiting_task = threading.get_native_id()
        thread = threading.Thread(target=self._loop, name="libmilter")
        thread.start()
        # A stop signal that came while the process was starting means there
        # is nothing to serve.
        self._serving = signal.sigtimedwait(workers.STOP_SIGNALS, 0) is None
        # The loop starts libmilter's signal thread, which waits for the stop
        # signals too, so it starts only once this thread waits for them
        # (_loop): a stop signal pending while no thread of ours waits would
        # go to libmilter's thread, and its stop can fail the loop.
        self._begin.set()
        try:
            while self._serving and not self._ended.is_set():
                if signal.sigwait(workers.STOP_SIGNALS | {WAKE}) != WAKE:
                    self._stopping.set()
                    self._stop(thread)
                    break
        finally:
            self._released.set()
        thread.join()
        if isinstance(self._failure, libmilter.LibmilterError) and self._stopping.is_set():
            # smfi_stop closes the listening socket.  A listener that had not
            # opened it yet, or that looked at the flag just before it was
            # set and takes its lock just after, fails (libmilter's own
            # signal thread runs the same race); the stop was asked for, and
            # the callbacks in flight still answer.
            log.info("libmilter's loop ended with an error while stopping: %s", self._failure)
        elif self._failure is not None:
            raise self._failure

    def _stop(self, thread: threading.Thread) -> None:
        self._drain()
        listener = thread.ident
        assert listener is not None  # set before start() returned
        waker = threading.Thread(target=self._wake, args=(listener,), name="wake")
        waker.start()
        # Sets the flag at once, then waits for the listener's lock (held
        # across its poll()) to close the socket: the waker ends that wait.
        libmilter.stop()
        waker.join()

    def _wake(self, listener: int) -> None:
        # The first WAKE only after a while, once smfi_stop has set the flag:
        # a listener woken earlier could look at it and then find its socket
        # closed, which libmilter takes for a failure.
        while not self._ended.wait(WAKE_INTERVAL):
            signal.pthread_kill(listener, WAKE)

    def _until_run_waits(self) -> bool:
        """Wait until run()'s thread is in sigwait(); False when it has
        stopped waiting (a stop came first, or the loop was told to end)."""
        while not (self._stopping.is_set() or self._released.is_set()):
            if waits_for_stop(self._waiting_task):
                return True
            time.sleep(GATE_INTERVAL)
        return False

    def _loop(self) -> None:
        # libmilter's threads, started from this one, inherit the mask.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {WAKE})
        self._begin.wait()
        try:
            if self._serving and self._until_run_waits():
                self._serve()
        except BaseException as failure:  # raised again in run()
            self._failure = failure
        finally:
            self._ended.set()
            signal.pthread_kill(self._waiting, WAKE)
            self._released.wait()
