"""The real daemon over the milter protocol: DNS knobs, logging, reload, CLI."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from testkit.daemon import REPO, Daemon, config_text, sockets_of
from testkit.dnsserver import DNSTestServer
from testkit.milterclient import (
    SMFIP_NOHDRS,
    SMFIP_NR_CONN,
    SMFIP_NR_HDR,
    SMFIP_NR_HELO,
    MilterClient,
    TransactionResult,
    one_transaction,
)
from tests.conftest import MakeDaemon


def transaction(daemon: Daemon, ip: str, helo: str, sender: str) -> TransactionResult:
    return one_transaction(daemon.socket, ip, helo, sender, mta_name="mx.test.example")


def spf_result(result: TransactionResult) -> str | None:
    if result.eom is None:
        return None
    for mod in result.eom.modifications:
        if mod.name == "Received-SPF" and mod.value:
            return mod.value.split()[0]
    return None


def test_void_lookup_limit(make_daemon: MakeDaemon) -> None:
    # The record has three a: terms that find nothing before the match.
    strict = make_daemon()
    assert spf_result(transaction(strict, "198.51.100.7", "x", "a@spf-voids.example.org")) == (
        "permerror"
    )
    lenient = make_daemon({"dns": {"void_lookup_limit": "3"}})
    assert spf_result(transaction(lenient, "198.51.100.7", "x", "a@spf-voids.example.org")) == (
        "pass"
    )


def test_cache_serves_repeated_lookups(make_daemon: MakeDaemon, dns_server: DNSTestServer) -> None:
    # One process: each worker has caches of its own.
    for size, expected_queries in (("1M", 1), ("0", 3)):
        daemon = make_daemon({"dns": {"cache_size": size}, "milter": {"workers": "1"}})
        dns_server.clear_queries()
        for _ in range(3):
            transaction(daemon, "198.51.100.7", "x", "a@spf-neutral.example.org")
        txt = [q for q in dns_server.queries if q[:2] == ("spf-neutral.example.org", "TXT")]
        assert len(txt) == expected_queries, (size, dns_server.queries)


def test_json_log_format(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon({"log": {"format": "json"}})
    transaction(daemon, "198.51.100.7", "helo-pass.example.org", "a@spf-pass.example.org")
    records = [json.loads(line) for line in daemon.log_text().splitlines()]
    verdicts = [r for r in records if r["message"].startswith("NOQUEUE: verdict ")]
    assert len(verdicts) == 1
    verdict = verdicts[0]
    assert verdict["level"] == "info" and verdict["queue_id"] == "NOQUEUE"
    assert (verdict["client_ip"], verdict["result"], verdict["action"]) == (
        "198.51.100.7",
        "pass",
        "accept",
    )
    assert isinstance(verdict["lookup_ms"], int)


def test_log_level_warning_hides_verdicts(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon({"log": {"level": "warning"}})
    transaction(daemon, "198.51.100.7", "helo-pass.example.org", "a@spf-pass.example.org")
    assert [line for line in daemon.log_text().splitlines() if not line.startswith("WARNING")] == []


def test_connection_in_progress_keeps_its_config(
    make_daemon: MakeDaemon, dns_server: DNSTestServer
) -> None:
    daemon = make_daemon()
    with MilterClient(daemon.socket) as old:
        old.negotiate()
        old.connect("client.example", "203.0.113.5")
        old.helo("helo-none.example.org")
        daemon.config_path.write_text(config_text(dns_server, {"policy": {"dry_run": "yes"}}))
        assert "configuration reloaded" in daemon.reload()
        result = old.transaction("<m@spf-fail-noexp.example.org>", ["<user@example.net>"])
        assert result.rcpts[0][1].code == "550"
    result = transaction(
        daemon, "203.0.113.5", "helo-none.example.org", "m@spf-fail-noexp.example.org"
    )
    assert result.rcpts[0][1].kind == "continue"
    assert spf_result(result) == "fail"


def test_reload_says_which_sections_need_a_restart(
    make_daemon: MakeDaemon, dns_server: DNSTestServer
) -> None:
    daemon = make_daemon(allowed=(r"take effect at the next restart",))
    changed = {"log": {"level": "debug"}, "dns": {"timeout": "0.4"}, "policy": {"dry_run": "yes"}}
    daemon.config_path.write_text(config_text(dns_server, changed))
    assert "configuration reloaded" in daemon.reload()
    (warning,) = [line for line in daemon.log_text().splitlines() if "next restart" in line]
    assert "changes to [dns], [log] take effect at the next restart" in warning


def spfmilter(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spfmilter", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


def test_check_config_prints_the_effective_config(tmp_path: Path) -> None:
    cfg = tmp_path / "a.cfg"
    cfg.write_text("[policy]\nmailfrom_reject = softfail, fail\n")
    done = spfmilter("--check-config", "--config", str(cfg))
    assert done.returncode == 0
    assert "mailfrom_reject = fail, softfail\n" in done.stdout
    assert "helo_reject = fail\n" in done.stdout
    assert done.stdout.startswith(f"# effective configuration from {cfg}")
    done = spfmilter("--check-config", "--config", str(REPO / "spfmilter.cfg"))
    assert done.returncode == 0


def test_bad_config_exits_78_naming_file_line_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.cfg"
    cfg.write_text("[policy]\n\nhelo_rejekt = fail\n")
    for args in (("--check-config",), ()):
        done = spfmilter(*args, "--config", str(cfg))
        assert done.returncode == 78
        assert done.stderr.startswith(f"spfmilter: {cfg}:3: [policy] helo_rejekt: unknown key")
        assert done.stdout == ""


def test_version() -> None:
    done = spfmilter("--version")
    assert done.returncode == 0 and done.stdout.startswith("spfmilter ")


def test_names_that_cannot_go_on_the_wire_are_none_not_temperror(make_daemon: MakeDaemon) -> None:
    # Hostile MAIL FROM domains: a temperror would defer such mail forever.
    daemon = make_daemon()
    for sender in ("a@ex\u00e4mple..com", "a@xn--zz-.example", "a@" + "a" * 70 + ".example"):
        result = transaction(daemon, "198.51.100.7", "helo-none.example.org", sender)
        assert spf_result(result) == "none", sender


def test_a_u_label_sender_domain_is_reported_by_its_a_labels(make_daemon: MakeDaemon) -> None:
    # The zone serves bücher.example.org as xn--bcher-kva.example.org: DNS is
    # asked for the A-label, and a DMARC verifier must be given the same
    # name to align with the From domain, not an escaped U-label.
    daemon = make_daemon({"headers": {"type": "both"}})
    sender = "alice@bücher.example.org"
    result = transaction(daemon, "198.51.100.30", "helo-none.example.org", sender)
    assert result.eom is not None, result
    found = {mod.name: " ".join((mod.value or "").split()) for mod in result.eom.modifications}
    assert found["Received-SPF"].startswith("pass "), found
    assert 'envelope-from="alice@b\\\\xfccher.example.org"' in found["Received-SPF"], found
    ar = found["Authentication-Results"]
    assert ar.startswith("mx.test.example; spf=pass "), ar
    assert ar.endswith(" smtp.mailfrom=xn--bcher-kva.example.org"), ar


def test_headers_negotiated_away_unless_forgeries_are_removed(make_daemon: MakeDaemon) -> None:
    """Headers are only read to delete forged Authentication-Results: with
    any other setting libmilter is asked not to send them at all."""
    cases: tuple[tuple[dict[str, dict[str, str]], bool], ...] = (
        ({}, True),
        ({"headers": {"type": "authentication-results", "remove_forged": "no"}}, True),
        ({"headers": {"type": "authentication-results"}}, False),
        ({"headers": {"type": "both"}}, False),
    )
    for sections, skipped in cases:
        daemon = make_daemon(sections)
        with MilterClient(daemon.socket) as client:
            _, _, protocol = client.negotiate()
        assert bool(protocol & SMFIP_NOHDRS) is skipped, sections
        assert protocol & SMFIP_NR_HDR, sections
        # SPF is decided at MAIL FROM and RCPT: the MTA need not wait at
        # connect and HELO.
        assert protocol & SMFIP_NR_CONN and protocol & SMFIP_NR_HELO, sections


def test_inet_sockets_send_at_once(make_daemon: MakeDaemon) -> None:
    """TCP_NODELAY on every socket of the milter port, the accepted ones
    included: libmilter writes a header change and its reply separately,
    and Nagle's algorithm would hold the reply for the MTA's delayed ACK."""
    daemon = make_daemon()
    with MilterClient(daemon.socket) as client:
        client.negotiate()
        client.connect("client.example", "198.51.100.7")
        held = [sock for pid in daemon.pids() for sock in sockets_of(pid, daemon.port)]
        try:
            listening = [s for s in held if s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)]
            assert listening and len(held) > len(listening)  # the client's connection
            assert all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in held)
        finally:
            for sock in held:
                sock.close()


def test_the_system_resolver_needs_no_import_after_start_up(tmp_path: Path) -> None:
    # Without [dns] nameservers (the package's default) the worker reads
    # /etc/resolv.conf after the privilege drop: what that needs must be
    # loaded before it.  A loopback client is skipped: no query is sent.
    daemon = Daemon(tmp_path / "d", "[milter]\nuser = root\nworkers = 1\n")
    with daemon:
        result = one_transaction(daemon.socket, "127.0.0.1", "localhost", "root@localhost")
        assert result.eom is not None and result.eom.modifications == []
    assert daemon.unexpected() == [], daemon.log_text()
