"""The runtime: logging, the config holder and its reload thread, runmilter.

This module owns process-wide state and its set-up order: logging handlers,
the resolver installed into the checker, signal masks (before any thread
starts), the SIGUSR1 reload thread, Milter.factory, and the socket.  It is
the only module besides milter.py that imports Milter.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import logging.handlers
import os
import signal
import sys
import threading
from pathlib import Path

import Milter

from spfmilter import checker, milter
from spfmilter.config import Config, ConfigError, LogFormat, LogTarget, load_config
from spfmilter.dns import Resolver

log = logging.getLogger(__name__)

MILTER_NAME = "spfmilter"
# libmilter's own timeout for talking to the MTA (seconds): longer than
# Postfix's milter_command_timeout so that the MTA gives up first.
MILTER_TIMEOUT = 600


class ConfigHolder:
    """The current Config, swapped atomically by a reload.

    Connections read `config` once when they open (a snapshot); assigning
    an attribute is atomic, so readers never see a half-made config.
    """

    def __init__(self, config: Config, path: str | None, socket_override: str | None) -> None:
        self._config = config
        self.path = path
        self.socket_override = socket_override
        self.reloads = 0
        self.failed_reloads = 0

    @property
    def config(self) -> Config:
        """The configuration new connections use."""
        return self._config

    def reload(self) -> bool:
        """Re-read the file; on any error keep the old config and say why."""
        try:
            new = load_config(self.path)
        except ConfigError as error:
            self.failed_reloads += 1
            log.error("reload failed, keeping the previous configuration: %s", error)
            return False
        # The socket and the resolver are set up once per process.
        old = self._config
        if self.socket_override is not None:
            new = with_socket(new, self.socket_override)
        if (new.milter, new.dns) != (old.milter, old.dns):
            log.warning("[milter] and [dns] changes take effect at the next restart")
        new = dataclasses.replace(new, milter=old.milter, dns=old.dns)
        for warning in new.warnings:
            log.warning("%s", warning)
        self._config = new
        self.reloads += 1
        log.info("configuration reloaded from %s", self.path or "built-in defaults")
        return True


class TextFormatter(logging.Formatter):
    """Plain text lines: 'LEVEL logger: message'."""

    def __init__(self, with_time: bool) -> None:
        fmt = "%(levelname)s %(name)s: %(message)s"
        super().__init__(("%(asctime)s " + fmt) if with_time else fmt)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, verdict fields as keys."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update({k: v if isinstance(v, int | float) else str(v) for k, v in fields.items()})
        if record.exc_info:
            data["traceback"] = self.formatException(record.exc_info)
        return json.dumps(data, sort_keys=False)


def setup_logging(config: Config) -> None:
    """Install the one handler for the whole process."""
    settings = config.log
    handler: logging.Handler
    if settings.target is LogTarget.SYSLOG:
        handler = logging.handlers.SysLogHandler(
            address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_MAIL
        )
        handler.ident = f"{MILTER_NAME}[{os.getpid()}]: "
    else:
        handler = logging.StreamHandler(sys.stderr)
    if settings.format is LogFormat.JSON:
        handler.setFormatter(JsonFormatter())
    else:
        # journald and syslog stamp lines themselves.
        handler.setFormatter(TextFormatter(with_time=False))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level.value.upper())


def _reload_loop(holder: ConfigHolder) -> None:
    while True:
        signal.sigwait({signal.SIGUSR1})
        holder.reload()


def prepare_socket(spec: str) -> None:
    """Create the directory of a unix socket if it is missing."""
    kind, _, rest = spec.partition(":")
    if kind in ("unix", "local"):
        Path(rest).parent.mkdir(parents=True, exist_ok=True)


def with_socket(config: Config, socket: str) -> Config:
    """`config` listening on `socket` instead (the --socket option)."""
    return dataclasses.replace(config, milter=dataclasses.replace(config.milter, socket=socket))


def run(config: Config, path: str | None, socket_override: str | None = None) -> int:
    """Run the milter in the foreground until SIGTERM or SIGINT."""
    if socket_override is not None:
        config = with_socket(config, socket_override)
    setup_logging(config)
    for warning in config.warnings:
        log.warning("%s", warning)
    resolver = Resolver(config.dns)
    checker.install(resolver.lookup, config.dns.void_lookup_limit)
    holder = ConfigHolder(config, path, socket_override)
    # Python signal handlers cannot run while runmilter() blocks in C, and
    # threads inherit the mask: block the signals here, before any thread
    # starts.  SIGUSR1 is taken with sigwait() by our reload thread; SIGTERM,
    # SIGINT and SIGHUP by libmilter's own signal thread, which stops the
    # milter cleanly (so HUP cannot mean reload).
    signal.pthread_sigmask(
        signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    )
    threading.Thread(target=_reload_loop, args=(holder,), name="reload", daemon=True).start()
    Milter.factory = milter.factory(holder, checker.check, resolver.lookup)
    spec = config.milter.socket
    prepare_socket(spec)
    log.info("spfmilter starting: socket=%s config=%s", spec, path or "built-in defaults")
    try:
        Milter.runmilter(MILTER_NAME, spec, MILTER_TIMEOUT)
    except Milter.milter.error as error:
        log.error("cannot run the milter on %s: %s", spec, error)
        return 1
    log.info("spfmilter stopped")
    return 0
