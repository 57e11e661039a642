"""pyspf's process-wide state, put back after a test.

`Checker.install()` sets pyspf's module globals (`spf.DNSLookup`,
`spf.MAX_VOID_LOOKUPS`) and adds a garbage collection callback, as the
daemon does once per process; a test that installs a checker leaves all
three as it found them, so that the next test sees plain pyspf.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

import spf


@contextlib.contextmanager
def pyspf_restored() -> Iterator[None]:
    """pyspf's globals and the garbage collection callbacks, restored on exit."""
    saved = spf.DNSLookup, spf.MAX_VOID_LOOKUPS
    callbacks = list(gc.callbacks)
    try:
        yield
    finally:
        spf.DNSLookup, spf.MAX_VOID_LOOKUPS = saved
        gc.callbacks[:] = callbacks
