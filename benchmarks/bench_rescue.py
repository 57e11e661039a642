"""What the rescue of forwarded mail costs in CPU per message.

This module owns the measurement behind the rescue's figures: the thread
CPU time of one Rescuer.check(), median of --repeat runs, for

- forward: a plain forward, one 2048-bit RSA DKIM signature aligned with
  the MAIL FROM domain (relaxed/relaxed, a 20 KB body), and the same with
  a 10 MB body (max_message_size's default);
- list-arc: a list message re-sealed by two hops (2048-bit keys; the
  author's signature broken by the list's subject tag), rescued by the
  trusted newest sealer's record of an SPF pass; also with 10 MB;
- hostile cases, each the worst of its kind within the bounds: a 10 MB
  body of white space and text under 8 aligned signatures whose body hash
  fails (relaxed), a 10 MB body under a 50-set ARC chain whose newest
  seal is trusted, 1000 DKIM-Signature fields, and a 300 KB run of spaces.

Keys are made with openssl, signatures with dkimpy; keys are served from
memory, so no DNS time is counted.  Run::

    .venv/bin/python -m benchmarks.bench_rescue [--repeat 200]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from spfmilter.config import orgdomain
from spfmilter.evaluation.rescue import Rescuer, RescueSettings
from testkit import dkimkit

PSL = Path("/usr/share/publicsuffix/public_suffix_list.dat")
SEALER = "lists.example.org"
HEADER = (
    b"From: Alice <alice@example.com>\r\nTo: team@lists.example.org\r\n"
    b"Subject: Report\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"Message-ID: <1@example.com>\r\n\r\n"
)


class _Trouble(Exception):
    pass


def cpu_of(rescuer: Rescuer, message: bytes, repeat: int) -> tuple[float, float, str]:
    times = []
    reason = ""
    for _ in range(repeat):
        started = time.thread_time()
        outcome = rescuer.check(message, "example.com", time.monotonic() + 30)
        times.append(time.thread_time() - started)
        reason = outcome.reason.value
    return statistics.median(times), max(times), reason


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as name:
        key = dkimkit.rsa_key(2048, Path(name))
    record = key.record
    records = {
        "sel._domainkey.example.com": record,
        f"arc._domainkey.{SEALER}": record,
        "arc._domainkey.relay.example": record,
    }

    def sign(message: bytes) -> bytes:
        return dkimkit.sign(message, key)

    def seal(message: bytes, domain: str) -> bytes:
        return dkimkit.seal(message, key, domain, "spf=pass smtp.mailfrom=example.com")

    def lookup(name: str, qtype: str, budget: float | None) -> list[tuple[tuple[str, str], object]]:
        value = records.get(name)
        return [] if value is None else [((name, "TXT"), (value[:255], value[255:]))]

    rescuer = Rescuer(
        RescueSettings(dkim=True, arc_trusted_sealers=frozenset({SEALER})),
        orgdomain.load(PSL),
        lookup,
        temporary=(_Trouble,),
    )
    text = b"".join(b"Line %d of the report, with some words in it.\r\n" % i for i in range(400))
    forward = sign(HEADER + text)
    listed = sign(HEADER + text).replace(b"Subject: Report", b"Subject: [team] Report")
    arc = seal(seal(listed, "relay.example"), SEALER)
    big_body = (b"word  \t " * 8 + b"\r\n") * 160_000
    eight = HEADER + big_body
    for _ in range(8):
        eight = sign(eight)
    eight = eight.replace(b"word", b"ward", 1)
    fifty = HEADER + b"short\r\n"
    for _ in range(50):
        fifty = seal(fifty, SEALER)
    fifty_big = fifty.replace(b"short\r\n", big_body)
    many = sign(HEADER + text)
    many = many[: many.index(b"From:")] * 399 + many
    spaces = sign(HEADER + b"x x\r\n").replace(b"x x\r\n", b"x" + b" " * 300_000 + b"x\r\n")
    big_forward = sign(HEADER + big_body)
    big_listed = big_forward.replace(b"Subject: Report", b"Subject: [team] Report")
    big_arc = seal(seal(big_listed, "relay.example"), SEALER)
    cases = [
        ("forward (1 RSA-2048 signature, 20 KB)", forward, args.repeat),
        ("list-arc (2 ARC sets, 20 KB)", arc, args.repeat),
        ("forward, 10 MB body", big_forward, 5),
        ("list-arc, 10 MB body", big_arc, 5),
        ("50 ARC sets (RFC 8617's most), small", fifty, 20),
        ("hostile: 8 signatures, 10 MB, bad body", eight, 5),
        ("hostile: 50 ARC sets, 10 MB", fifty_big, 5),
        ("hostile: 400 DKIM-Signature fields", many, 20),
        ("hostile: 300 KB run of spaces", spaces, 20),
    ]
    print(f"{'case':42} {'median ms':>10} {'max ms':>10}  outcome")
    for label, message, repeat in cases:
        median, worst, reason = cpu_of(rescuer, message, repeat)
        print(f"{label:42} {median * 1000:10.2f} {worst * 1000:10.2f}  {reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
