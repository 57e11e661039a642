"""The bare pymilter baseline: the protocol work spfmilter does, without SPF.

This module owns the floor every comparison is measured against: a milter
that negotiates the same steps as spfmilter's defaults and inserts one
header at the top at end of message, and nothing else.  The ratio of a
target to it is the cost of that target beyond pymilter, libmilter and the
protocol, which both carry.  It runs as a process of its own::

    python -m benchmarks.baseline SOCKET_SPEC

and imports nothing but pymilter, so that process is as light as a bare
pymilter milter can be.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import Milter

CONTINUE: int = Milter.CONTINUE
BASELINE_HEADER = "X-Baseline"


class BaselineMilter(Milter.Base):  # type: ignore[misc]
    """The protocol work spfmilter does, minus SPF.

    It overrides the same callbacks as spfmilter.mta.libmilter.SpfMilter with the
    same decorators, so libmilter negotiates the same steps as spfmilter's
    defaults (no reply to connect and HELO, no headers, no body);
    bench_milter checks that the daemons agree on them.
    """

    @Milter.noreply  # type: ignore[untyped-decorator]
    def connect(self, hostname: str, family: int, hostaddr: object) -> int:
        return CONTINUE

    @Milter.noreply  # type: ignore[untyped-decorator]
    def hello(self, heloname: str) -> int:
        return CONTINUE

    def envfrom(self, mail_from: str, *params: str) -> int:
        return CONTINUE

    def envrcpt(self, recipient: str, *params: str) -> int:
        return CONTINUE

    def negotiate(self, opts: list[int]) -> int:
        # As spfmilter with its default headers: the header callback exists
        # (without reply) but libmilter is asked not to send headers at all.
        offered = opts[1]
        status: int = super().negotiate(opts)
        if status == CONTINUE:
            opts[1] |= offered & Milter.P_NOHDRS
        return status

    @Milter.noreply  # type: ignore[untyped-decorator]
    def header(self, name: str, value: str) -> int:
        return CONTINUE

    def eom(self) -> int:
        # At index 0, as spfmilter inserts its Received-SPF.
        self.addheader(BASELINE_HEADER, "1", 0)
        return CONTINUE


def main(argv: Sequence[str] | None = None) -> int:
    """Run BaselineMilter on the socket given until SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.baseline", description="The bare pymilter baseline milter."
    )
    parser.add_argument("socket", help="libmilter socket spec, e.g. unix:/path or inet:PORT@HOST")
    args = parser.parse_args(argv)
    Milter.factory = BaselineMilter
    Milter.runmilter("baseline", args.socket, 600)  # the timeout spfmilter.process.daemon uses
    return 0


if __name__ == "__main__":
    sys.exit(main())
