"""The memory of the process it is loaded into, for leak checks.

Python imports a module named sitecustomize at start-up from its path, so a
test that puts this directory first in a daemon's PYTHONPATH looks inside
the daemon without any code for it in the product.  With SPFMILTER_PROBE
naming a Unix socket path, it answers each connection to that path with the
process's figures after a full collection, as JSON: the blocks Python's
small-object allocator has handed out (every object and buffer up to 512
bytes, tracked by the collector or not), the objects the collector tracks,
and the bytes malloc has handed out (larger objects, and what C code such as
libmilter allocates).  tracemalloc, which would count bytes, deadlocks here:
its hook of raw allocations takes the GIL in libmilter's new threads while
they make their Python thread state.  With SPFMILTER_PLANT_LEAK set too, to
"object:BYTES" or "malloc:BYTES", every MAIL FROM keeps that many bytes for
good, as a Python object or as a C allocation never freed, so that a test
can show its check finds a leak of that size.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

PROBE = "SPFMILTER_PROBE"
PLANT = "SPFMILTER_PLANT_LEAK"
# A list slot, as each planted object costs one.
POINTER = 8


class _MallInfo2(ctypes.Structure):
    """glibc's struct mallinfo2 (malloc.h)."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


_mallinfo2 = ctypes.CDLL(None).mallinfo2
_mallinfo2.restype = _MallInfo2


def figures() -> dict[str, int]:
    """This process's memory in use once the collector ran."""
    gc.collect()
    malloc = _mallinfo2()
    return {
        "blocks": sys.getallocatedblocks(),
        "objects": len(gc.get_objects()),
        # Bytes in chunks from the heaps, and in chunks mapped of their own.
        "malloc": malloc.uordblks + malloc.hblkhd,
    }


def serve(listener: socket.socket) -> None:
    while True:
        connection, _ = listener.accept()
        with connection:
            connection.sendall(json.dumps(figures()).encode())


def start(path: str) -> None:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    # The daemon blocks the signals it waits for before its first thread,
    # and every thread must: this one, started earlier, blocks them all.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        threading.Thread(target=serve, args=(listener,), name="probe", daemon=True).start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def plant(kind: str, size: int) -> None:
    """Keep `size` bytes per Session.mail call: an object and its list slot,
    or a block from malloc."""
    from spfmilter.core.session import Session

    kept: list[bytes] = []
    length = size - POINTER - sys.getsizeof(b"")
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    leaks: dict[str, Callable[[], object]] = {
        "object": lambda: kept.append(bytes(length)),
        "malloc": lambda: libc.malloc(size),
    }
    leak = leaks[kind]
    mail = Session.mail

    def leaking(self: Session, *args: Any, **kwargs: Any) -> Any:
        leak()
        return mail(self, *args, **kwargs)

    Session.mail = leaking  # type: ignore[method-assign]


if PROBE in os.environ:
    start(os.environ[PROBE])
    if PLANT in os.environ:
        kind, _, size = os.environ[PLANT].partition(":")
        plant(kind, int(size))
