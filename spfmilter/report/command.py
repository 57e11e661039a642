"""``spfmilter report``: what rejecting would do, read from verdict logs.

This module owns the command: its options, the order of work (every input
opened first, then read in the order given, standard input when none is
named, on as many cores as the process may use), the choice of output
(text, --json or --html on standard output), and the exit status (EXIT_OK,
EXIT_USAGE, EXIT_FAILED, as the --help text says).  A report is written
whole or not at all: when an input cannot be opened or read to its end it
is named on standard error and standard output gets nothing, since a
report missing part of the logs would mislead.  ``main(argv)`` does
everything and returns the status, so tests can call it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence

from spfmilter.config.values import parse_results
from spfmilter.printable import escape
from spfmilter.report import page, table
from spfmilter.report.inputs import STDIN, Input, InputError, open_input
from spfmilter.report.progress import Progress
from spfmilter.report.scan import WorkerError, scan
from spfmilter.report.tally import REJECTABLE

PROG = "spfmilter report"
EXIT_OK = 0  # the report was written
EXIT_FAILED = 1  # a worker process failed: no report
EXIT_USAGE = 2  # a bad option, or an input that cannot be opened or read: no report

_EPILOG = f"""\
Run spfmilter with [policy] dry_run = yes for a while, then read its logs:
  spfmilter report /var/log/mail.log*
  journalctl -u spfmilter -o export --since -30d | spfmilter report --html > report.html

exit status:
  {EXIT_OK}  the report was written to standard output
  {EXIT_FAILED}  the report failed (a worker process died); nothing was written
  {EXIT_USAGE}  a bad option, or a file that cannot be opened or read to its end
     (named on standard error); nothing was written
"""


def _results(text: str) -> frozenset[str]:
    """A comma list of MAIL FROM results, read as [policy] mailfrom_reject
    reads it; at least one (a preview that refuses nothing previews nothing)."""
    try:
        results = frozenset(result.value for result in parse_results(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if not results:
        raise argparse.ArgumentTypeError(
            f"expected a comma list of {', '.join(REJECTABLE)}; got nothing"
        )
    return results


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_EPILOG,
        description="Read spfmilter's verdict logs (text or JSON lines, plain or gzip, or\n"
        "journalctl -o export) and report what rejecting would refuse: counts by\n"
        "result and action, refusals by sender domain and by client, rescues, and\n"
        "likely forwarders with the [skip] lines that would exempt them.",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="one JSON object")
    output.add_argument("--html", action="store_true", help="one self-contained HTML page")
    parser.add_argument(
        "--reject",
        metavar="RESULTS",
        type=_results,
        default=frozenset({"fail"}),
        help="comma list of the MAIL FROM results that would be refused, as "
        f"[policy] mailfrom_reject takes them ({', '.join(REJECTABLE)}; default: fail)",
    )
    parser.add_argument(
        "logfiles",
        metavar="LOGFILE",
        nargs="*",
        help="log files in the order to read them, plain or gzip, rotated ones included "
        "('-' or none: standard input)",
    )
    return parser


def main(argv: Sequence[str]) -> int:
    """``spfmilter report ...``: write the report to standard output."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
        if not args.logfiles and sys.stdin.isatty():
            # "spfmilter report" alone would wait for a log typed in.
            parser.error("name the log files (or pipe a log in, or name '-')")
    except SystemExit as exit:  # argparse's usage error (2) or --help (0)
        return EXIT_USAGE if exit.code else EXIT_OK
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
        print(f"{PROG}: {escape(str(error))}", file=sys.stderr)
        return EXIT_USAGE
    except WorkerError as error:
        print(f"{PROG}: failed: {escape(str(error))}", file=sys.stderr)
        return EXIT_FAILED
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
    return EXIT_OK
