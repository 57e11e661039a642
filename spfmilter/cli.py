"""Command line: ``spfmilter`` (run), ``--check-config``, ``--version``,
and the subcommands ``check`` and ``report``.

This module owns argument parsing and exit statuses (0 ok, 2 usage, 78
EX_CONFIG; ``report`` says its own).  ``main(argv)`` does everything and
returns the status, so tests can call it.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import Sequence

from spfmilter import __version__
from spfmilter.config import docs
from spfmilter.config.loading import EX_CONFIG, ConfigError, load_config, render
from spfmilter.config.values import parse_macros, parse_socket
from spfmilter.core.metrics import Metrics
from spfmilter.core.session import Services
from spfmilter.evaluation import evaluator
from spfmilter.mta import check
from spfmilter.process import daemon, logs
from spfmilter.report import command as report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spfmilter",
        description="SPF (RFC 7208) milter for Postfix and Sendmail.",
        epilog="commands (each has --help):\n"
        "  spfmilter check ...   evaluate one transaction as the milter would\n"
        "  spfmilter report ...  read verdict logs: what rejecting would refuse",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", metavar="PATH", help="configuration file (default: built-in defaults)"
    )
    parser.add_argument(
        "--socket",
        metavar="SPEC",
        help="listen on SPEC (unix:/path, inet:PORT@HOST, inet6:PORT@HOST), "
        "overriding [milter] socket",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration, print the effective settings and exit",
    )
    parser.add_argument(
        "--example-config",
        action="store_true",
        help="print a commented configuration file with every key at its default",
    )
    parser.add_argument("--version", action="version", version=f"spfmilter {__version__}")
    return parser


def _check_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spfmilter check",
        description="Evaluate one transaction exactly as the milter would and print the "
        "result; or, with --policy-request, answer Postfix policy delegation blocks "
        "read from standard input.",
    )
    parser.add_argument("--config", metavar="PATH", help="configuration file")
    parser.add_argument("--client-ip", metavar="IP", help="SMTP client address")
    parser.add_argument("--helo", metavar="NAME", default="", help="HELO/EHLO argument")
    parser.add_argument("--sender", metavar="ADDR", help="MAIL FROM address; '' for <>")
    parser.add_argument(
        "--rcpt", metavar="ADDR", action="append", default=[], help="RCPT TO (repeatable)"
    )
    parser.add_argument("--sasl-user", metavar="NAME", default="", help="SASL login name")
    parser.add_argument(
        "--macro",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help="a macro the MTA sends, e.g. {daemon_name}=ORIGINATING (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--policy-request",
        action="store_true",
        help="read policy delegation attribute blocks from stdin, answer action= lines",
    )
    return parser


def check_main(argv: Sequence[str]) -> int:
    """``spfmilter check ...``: 0 whatever the verdict, 2 bad arguments, 78 bad config."""
    parser = _check_parser()
    args = parser.parse_args(argv)
    if not args.policy_request and (args.client_ip is None or args.sender is None):
        parser.error("--client-ip and --sender are required (or use --policy-request)")
    try:
        config = load_config(args.config)
    except ConfigError as error:
        logs.report("spfmilter", str(error))
        return EX_CONFIG
    try:
        macros = parse_macros(",".join(args.macro))
    except ValueError as error:
        parser.error(f"--macro: {error}")
    metrics = Metrics()
    shared = Services(evaluator.build(config.dns, metrics), metrics, host_name=socket.getfqdn())
    if args.policy_request:
        check.serve_policy(config, shared, sys.stdin, sys.stdout)
        return 0
    request = check.Request(
        client_ip=args.client_ip,
        helo=args.helo,
        sender=args.sender.strip("<>"),
        recipients=tuple(args.rcpt) or (check.DEFAULT_RECIPIENT,),
        auth_user=args.sasl_user,
        macros=macros,
    )
    try:
        result = check.run(config, shared, request)
    except ValueError as error:
        parser.error(f"--client-ip: {error}")
    print(check.as_json(result) if args.json else check.as_text(result))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run spfmilter with `argv` (default sys.argv[1:]); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["check"]:
        return check_main(argv[1:])
    if argv[:1] == ["report"]:
        return report.main(argv[1:])
    args = _parser().parse_args(argv)
    if args.example_config:
        sys.stdout.write(docs.example())
        return 0
    try:
        config = load_config(args.config)
        socket = parse_socket(args.socket) if args.socket else None
    except ConfigError as error:
        logs.report("spfmilter", str(error))
        return EX_CONFIG
    except ValueError as error:
        logs.report("spfmilter", f"--socket: {error}")
        return 2
    if args.check_config:
        for warning in config.warnings:
            logs.report("spfmilter", warning, logging.WARNING)
        sys.stdout.write(render(daemon.with_socket(config, socket) if socket else config))
        return 0
    return daemon.run(config, args.config, socket)
