"""The runtime's pieces that run without a daemon: whether a thread waits
for the stop signal, which gates the start of libmilter's loop."""

from __future__ import annotations

import signal
import threading
import time

from spfmilter.process import milterloop


def _thread_that(wait: bool) -> tuple[threading.Thread, list[int], threading.Event]:
    """A thread blocking SIGTERM, in sigwait() for it or asleep."""
    task: list[int] = []
    done = threading.Event()

    def body() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        task.append(threading.get_native_id())
        if wait:
            signal.sigwait({signal.SIGTERM})
        else:
            done.wait(30)

    thread = threading.Thread(target=body)
    thread.start()
    return thread, task, done


def _settled(task: list[int], wanted: bool) -> bool:
    """waits_for_stop() of the thread, given time to get where it goes."""
    deadline = time.monotonic() + 10
    while not task or milterloop.waits_for_stop(task[0]) is not wanted:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def test_a_thread_in_sigwait_waits_for_stop() -> None:
    thread, task, _ = _thread_that(wait=True)
    try:
        assert _settled(task, True)
    finally:
        signal.pthread_kill(thread.ident or 0, signal.SIGTERM)
        thread.join(10)
    assert not thread.is_alive()


def test_a_thread_blocking_sigterm_elsewhere_does_not() -> None:
    thread, task, done = _thread_that(wait=False)
    try:
        assert _settled(task, False)
        time.sleep(0.05)
        assert milterloop.waits_for_stop(task[0]) is False
    finally:
        done.set()
        thread.join(10)


def test_without_proc_the_loop_is_not_held_back() -> None:
    assert milterloop.waits_for_stop(2**31 - 1) is True
