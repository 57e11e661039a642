"""Command line: ``spfmilter`` (run), ``--check-config``, ``--version``.

This module owns argument parsing and exit statuses (0 ok, 2 usage, 78
EX_CONFIG).  ``main(argv)`` does everything and returns the status, so
tests can call it.  It imports daemon and config; nothing imports it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from spfmilter import __version__, daemon
from spfmilter.config import EX_CONFIG, ConfigError, load_config, parse_socket, render


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spfmilter",
        description="SPF (RFC 7208) milter for Postfix and Sendmail.",
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
    parser.add_argument("--version", action="version", version=f"spfmilter {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run spfmilter with `argv` (default sys.argv[1:]); return the exit status."""
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
        socket = parse_socket(args.socket) if args.socket else None
    except ConfigError as error:
        print(f"spfmilter: {error}", file=sys.stderr)
        return EX_CONFIG
    except ValueError as error:
        print(f"spfmilter: --socket: {error}", file=sys.stderr)
        return 2
    if args.check_config:
        for warning in config.warnings:
            print(f"spfmilter: warning: {warning}", file=sys.stderr)
        sys.stdout.write(render(daemon.with_socket(config, socket) if socket else config))
        return 0
    return daemon.run(config, args.config, socket)
