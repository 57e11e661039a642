"""``spfmilter report``: what rejecting would do, read from verdict logs.

This module owns the command: its options (DESIGN section 6), the order of
work (every input opened first, then read in the order given, standard
input when none is named, on as many cores as the process may use), the
choice of output (text, --json or --html on
standard output), and the exit status: 0 done, 2 a usage error, 1 an input
that cannot be read (named on standard error; no report then, since it
would be missing part of the logs).  ``main(argv)`` does everything and
returns the status, so tests can call it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence

from spfmilter.report import page, table
from spfmilter.report.inputs import STDIN, Input, InputError, open_input
from spfmilter.report.progress import Progress
from spfmilter.report.scan import scan
from spfmilter.report.summary import visible
from spfmilter.report.tally import REJECTABLE

PROG = "spfmilter report"


def _results(text: str) -> frozenset[str]:
    """A comma list of MAIL FROM results, as [policy] mailfrom_reject takes it."""
    results = {item.strip().lower() for item in text.split(",")} - {""}
    unknown = results - set(REJECTABLE)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"expected a comma list of {', '.join(REJECTABLE)}; got {', '.join(sorted(unknown))}"
        )
    return frozenset(results)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Read spfmilter's verdict logs (text or JSON lines, plain or gzip, or "
        "journalctl -o export) and report what rejecting would refuse: counts by result and "
        "action, refusals by sender domain and client, rescues, and likely forwarders.",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="one JSON object")
    output.add_argument("--html", action="store_true", help="one self-contained HTML page")
    parser.add_argument(
        "--reject",
        metavar="RESULTS",
        type=_results,
        default=frozenset({"fail"}),
        help="MAIL FROM results that would be refused, as [policy] mailfrom_reject "
        f"(from {', '.join(REJECTABLE)}; default: fail)",
    )
    parser.add_argument(
        "logfiles",
        metavar="LOGFILE",
        nargs="*",
        help="log files in the order to read them ('-' or none: standard input)",
    )
    return parser


def main(argv: Sequence[str]) -> int:
    """``spfmilter report ...``: write the report to standard output."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit:  # argparse's usage error (2) or --help (0)
        return int(exit.code or 0)
    names: list[str] = args.logfiles or [STDIN]
    inputs: list[Input] = []
    progress = Progress(sys.stderr)
    try:
        try:
            for name in names:
                inputs.append(open_input(name))
            tally = scan(inputs, args.reject, progress, len(os.sched_getaffinity(0)))
        finally:
            progress.done()
            for source in inputs:
                source.close()
    except InputError as error:
        print(f"{PROG}: {visible(str(error))}", file=sys.stderr)
        return 1
    summary = tally.summary("standard input" if name == STDIN else name for name in names)
    if args.json:
        text = json.dumps(dataclasses.asdict(summary), indent=2) + "\n"
    elif args.html:
        text = page.render(summary)
    else:
        text = table.render(summary)
    # Names from the logs may hold characters the output's encoding lacks.
    encoding = sys.stdout.encoding or "utf-8"
    sys.stdout.write(text.encode(encoding, "backslashreplace").decode(encoding))
    sys.stdout.flush()
    return 0
