"""The rescue's verification: real dkimpy (and OpenDKIM) signatures and ARC
seals on keys made here, served by a fake lookup; and hostile messages."""

from __future__ import annotations

import base64
import hashlib
import itertools
import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest

from spfmilter.config import orgdomain
from spfmilter.core.model import RescueKind
from spfmilter.evaluation.rescue import (
    ArcCheck,
    AuthResult,
    DkimCheck,
    Reason,
    RescueLimits,
    Rescuer,
    RescueSettings,
)
from testkit.dkimkit import (
    MESSAGE,
    KeyPair,
    LimitError,
    TempError,
    Zone,
    ed25519_key,
    opendkim_key,
    rsa_key,
    seal,
    sign,
)

SEALER = "lists.example.org"
PSL = Path("/usr/share/publicsuffix/public_suffix_list.dat")
DEFAULT_LIMITS = RescueLimits()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    directory = tmp_path_factory.mktemp("keys")
    return {
        "rsa2048": rsa_key(2048, directory),
        "rsa1024": rsa_key(1024, directory),
        "rsa512": rsa_key(512, directory),
        "ed25519": ed25519_key(),
    }


@pytest.fixture(scope="module")
def suffixes() -> orgdomain.PublicSuffixes:
    return orgdomain.load(PSL)


@pytest.fixture
def zone(keys: dict[str, KeyPair]) -> Zone:
    zone = Zone()
    zone.publish("sel", "example.com", keys["rsa2048"].record)
    zone.publish("ed", "example.com", keys["ed25519"].record)
    zone.publish("small", "example.com", keys["rsa1024"].record)
    zone.publish("tiny", "example.com", keys["rsa512"].record)
    zone.publish("sel", "forwarder.example", keys["rsa2048"].record)
    zone.publish("arc", SEALER, keys["rsa2048"].record)
    zone.publish("arc", "relay.example", keys["rsa2048"].record)
    return zone


Make = Callable[..., Rescuer]


@pytest.fixture
def make(zone: Zone, suffixes: orgdomain.PublicSuffixes) -> Make:
    def rescuer(
        *,
        dkim: bool = True,
        sealers: frozenset[str] = frozenset({SEALER}),
        limits: RescueLimits = DEFAULT_LIMITS,
        **options: Callable[[], float],
    ) -> Rescuer:
        return Rescuer(
            RescueSettings(dkim=dkim, arc_trusted_sealers=sealers),
            suffixes,
            zone.lookup,
            temporary=(TempError,),
            refused=(LimitError,),
            limits=limits,
            **options,
        )

    return rescuer


def soon() -> float:
    return time.monotonic() + 10


def field_values(message: bytes, name: bytes) -> list[bytes]:
    """The values of the header fields `name`, as dkimpy reads them."""
    headers, _ = dkim.rfc822_parse(message)
    return [value for field, value in headers if field.lower() == name]


def header_b(message: bytes) -> str:
    """RFC 6008 section 4's header.b of the first DKIM-Signature: the start
    of its b= value, folding white space left out."""
    value = field_values(message, b"dkim-signature")[0]
    b = value[value.index(b" b=") + 3 :]
    return b"".join(b.split())[:8].decode()


def without(message: bytes, start: bytes) -> bytes:
    """`message` less the header field that begins with `start`, with its
    continuation lines."""
    begin = message.index(start)
    end = begin
    while True:
        end = message.index(b"\r\n", end) + 2
        if message[end : end + 1] not in (b" ", b"\t"):
            return message[:begin] + message[end:]


# DKIM


@pytest.mark.parametrize("key", ["rsa2048", "ed25519", "rsa1024"])
def test_an_aligned_signature_rescues(make: Make, keys: dict[str, KeyPair], key: str) -> None:
    selector = {"rsa2048": "sel", "ed25519": "ed", "rsa1024": "small"}[key]
    message = sign(MESSAGE, keys[key], selector=selector)
    outcome = make().check(message, "example.com", soon())
    assert outcome.kind is RescueKind.DKIM
    assert (outcome.domain, outcome.selector) == ("example.com", selector)
    assert outcome.dkim[0].result is AuthResult.PASS
    assert outcome.cpu_seconds > 0


def test_relaxed_alignment_by_organizational_domain(make: Make, keys: dict[str, KeyPair]) -> None:
    message = sign(MESSAGE, keys["rsa2048"], domain="Example.COM")
    outcome = make().check(message, "bounces.mail.Example.COM.", soon())
    assert outcome.rescued and outcome.domain == "example.com"


def test_simple_canonicalization(make: Make, keys: dict[str, KeyPair]) -> None:
    message = sign(MESSAGE, keys["rsa2048"], canonicalize=(b"simple", b"simple"))
    assert make().check(message, "example.com", soon()).rescued


def test_an_unaligned_signature_does_not_rescue_and_is_not_verified(
    make: Make, keys: dict[str, KeyPair], zone: Zone
) -> None:
    message = sign(MESSAGE, keys["rsa2048"], domain="forwarder.example")
    outcome = make(sealers=frozenset()).check(message, "example.com", soon())
    assert outcome.kind is RescueKind.NONE
    assert outcome.reason is Reason.UNALIGNED
    assert outcome.dkim[0].result is None and not outcome.dkim[0].aligned
    assert zone.asked == []


def test_a_public_suffix_is_not_aligned_with_its_subdomains(
    make: Make, keys: dict[str, KeyPair], zone: Zone
) -> None:
    zone.publish("sel", "co.uk", keys["rsa2048"].record)
    message = sign(MESSAGE, keys["rsa2048"], domain="co.uk")
    assert make().check(message, "victim.co.uk", soon()).reason is Reason.UNALIGNED


def test_no_signature(make: Make) -> None:
    outcome = make(sealers=frozenset()).check(MESSAGE, "example.com", soon())
    assert (outcome.kind, outcome.reason) == (RescueKind.NONE, Reason.NO_SIGNATURE)


def test_a_changed_body_breaks_the_body_hash(make: Make, keys: dict[str, KeyPair]) -> None:
    message = sign(MESSAGE, keys["rsa2048"]).replace(b"noon", b"one")
    outcome = make().check(message, "example.com", soon())
    assert (outcome.kind, outcome.reason) == (RescueKind.NONE, Reason.BODY_HASH)
    assert outcome.dkim[0].result is AuthResult.FAIL


def test_a_changed_header_breaks_the_signature(make: Make, keys: dict[str, KeyPair]) -> None:
    message = sign(MESSAGE, keys["rsa2048"]).replace(b"Subject: Lunch", b"Subject: Lunch!")
    outcome = make().check(message, "example.com", soon())
    assert outcome.reason is Reason.BAD_SIGNATURE
    assert outcome.dkim[0].result is AuthResult.FAIL


def test_a_key_not_found(make: Make, keys: dict[str, KeyPair]) -> None:
    message = sign(MESSAGE, keys["rsa2048"], selector="gone")
    outcome = make().check(message, "example.com", soon())
    assert (outcome.kind, outcome.reason) == (RescueKind.NONE, Reason.KEY_NOT_FOUND)
    assert outcome.dkim[0].result is AuthResult.PERMERROR


def test_dns_trouble_on_the_key_defers(make: Make, keys: dict[str, KeyPair], zone: Zone) -> None:
    zone.errors["sel._domainkey.example.com"] = TempError("timeout")
    outcome = make().check(sign(MESSAGE, keys["rsa2048"]), "example.com", soon())
    assert (outcome.kind, outcome.reason) == (RescueKind.TEMPORARY, Reason.KEY_TEMPERROR)
    assert outcome.dkim[0].result is AuthResult.TEMPERROR


def test_a_second_signature_rescues_despite_dns_trouble_on_the_first(
    make: Make, keys: dict[str, KeyPair], zone: Zone
) -> None:
    zone.errors["sel._domainkey.example.com"] = TempError("timeout")
    message = sign(sign(MESSAGE, keys["ed25519"], selector="ed"), keys["rsa2048"])
    outcome = make().check(message, "example.com", soon())
    assert outcome.rescued and outcome.selector == "ed"
    assert [c.result for c in outcome.dkim] == [AuthResult.TEMPERROR, AuthResult.PASS]


def test_a_refused_key_answer(make: Make, keys: dict[str, KeyPair], zone: Zone) -> None:
    zone.errors["sel._domainkey.example.com"] = LimitError("too many records")
    outcome = make().check(sign(MESSAGE, keys["rsa2048"]), "example.com", soon())
    assert (outcome.kind, outcome.reason) == (RescueKind.NONE, Reason.KEY_REFUSED)


def test_a_key_below_1024_bits_is_refused(make: Make, keys: dict[str, KeyPair]) -> None:
    message = sign(MESSAGE, keys["rsa512"], selector="tiny")
    outcome = make().check(message, "example.com", soon())
    assert outcome.reason is Reason.KEY_TOO_SMALL
    assert outcome.dkim[0].result is AuthResult.POLICY
    # The log says by how much.
    assert outcome.dkim[0].detail == "512 bits"


def test_rsa_sha1_is_refused(make: Make, keys: dict[str, KeyPair], zone: Zone) -> None:
    message = sign(MESSAGE, keys["rsa2048"], signature_algorithm=b"rsa-sha1")
    outcome = make().check(message, "example.com", soon())
    assert outcome.reason is Reason.WEAK_ALGORITHM
    assert zone.asked == []


def test_a_partial_body_length_is_refused(make: Make, keys: dict[str, KeyPair]) -> None:
    signed = sign(MESSAGE, keys["rsa2048"], length=True)
    assert make().check(signed, "example.com", soon()).rescued
    appended = signed + b"Click here: https://phish.example/\r\n"
    outcome = make().check(appended, "example.com", soon())
    assert (outcome.kind, outcome.reason) == (RescueKind.NONE, Reason.PARTIAL_BODY)
    assert outcome.dkim[0].result is AuthResult.POLICY


def test_two_from_fields_are_refused(make: Make, keys: dict[str, KeyPair]) -> None:
    message = b"From: Mallory <ceo@example.com>\r\n" + sign(MESSAGE, keys["rsa2048"])
    outcome = make().check(message, "example.com", soon())
    assert (outcome.kind, outcome.reason) == (RescueKind.NONE, Reason.FROM_COUNT)


def test_a_signature_that_does_not_sign_from_is_ignored(
    make: Make, keys: dict[str, KeyPair]
) -> None:
    # dkimpy refuses to sign without From: build the signature by hand with
    # its own header generator.
    signer = dkim.DKIM(MESSAGE)
    signer.hasher = dkim.HASH_ALGORITHMS[b"rsa-sha256"]
    canon = dkim.CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    body_hash = base64.b64encode(hashlib.sha256(canon.canonicalize_body(signer.body)).digest())
    fields = [
        (b"v", b"1"),
        (b"a", b"rsa-sha256"),
        (b"c", b"relaxed/relaxed"),
        (b"d", b"example.com"),
        (b"s", b"sel"),
        (b"h", b"subject : date"),
        (b"bh", body_hash),
        (b"b", b""),
    ]
    pk = dkim.crypto.parse_pem_private_key(keys["rsa2048"].private)
    value = signer.gen_header(fields, [b"subject", b"date"], canon, b"DKIM-Signature", pk)
    message = b"DKIM-Signature: " + value + MESSAGE
    assert dkim.DKIM(message).verify(dnsfunc=lambda name, timeout=5: keys["rsa2048"].record)
    outcome = make().check(message, "example.com", soon())
    assert (outcome.kind, outcome.reason) == (RescueKind.NONE, Reason.FROM_NOT_SIGNED)
    # RFC 6376 section 6.1.1: a PERMFAIL, not a policy choice.
    assert outcome.dkim[0].result is AuthResult.PERMERROR


def test_a_key_in_testing_mode_is_not_used(
    make: Make, keys: dict[str, KeyPair], zone: Zone
) -> None:
    zone.publish("test", "example.com", keys["rsa2048"].record + b"; t=y")
    outcome = make().check(sign(MESSAGE, keys["rsa2048"], selector="test"), "example.com", soon())
    assert outcome.reason is Reason.KEY_TESTING


def test_a_revoked_key(make: Make, keys: dict[str, KeyPair], zone: Zone) -> None:
    zone.publish("old", "example.com", b"v=DKIM1; k=rsa; p=")
    outcome = make().check(sign(MESSAGE, keys["rsa2048"], selector="old"), "example.com", soon())
    assert outcome.reason is Reason.KEY_REVOKED


def test_dkim_off_leaves_signatures_alone(make: Make, keys: dict[str, KeyPair]) -> None:
    outcome = make(dkim=False).check(sign(MESSAGE, keys["rsa2048"]), "example.com", soon())
    assert not outcome.rescued and outcome.dkim == ()


def test_rescue_off(make: Make, keys: dict[str, KeyPair]) -> None:
    outcome = make(dkim=False, sealers=frozenset()).check(MESSAGE, "example.com", soon())
    assert (outcome.kind, outcome.reason) == (RescueKind.NONE, Reason.DISABLED)


@pytest.mark.skipif(shutil.which("opendkim") is None, reason="OpenDKIM is not installed")
def test_a_message_signed_by_opendkim(make: Make, zone: Zone, tmp_path: Path) -> None:
    """OpenDKIM's own signer (its test mode), with a key from opendkim-genkey."""
    keydir = tmp_path / "keys"
    keydir.mkdir(mode=0o700)
    key = opendkim_key(keydir, "example.com", "odk")
    zone.publish("odk", "example.com", key.record)
    config = keydir / "opendkim.conf"
    config.write_text(
        "Mode s\nDomain example.com\nSelector odk\n"
        f"KeyFile {keydir / 'odk.private'}\nSignatureAlgorithm rsa-sha256\n"
        "Canonicalization relaxed/simple\nSyslog no\n"
        # The temporary directory's parents are writable by others.
        "RequireSafeKeys false\n"
    )
    source = keydir / "message.eml"
    # OpenDKIM reads a file with LF line ends (as from a local mailbox).
    source.write_bytes(MESSAGE.replace(b"\r\n", b"\n"))
    signed = subprocess.run(
        ["opendkim", "-x", str(config), "-b", "s", "-t", str(source)],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    # It prints the field with CRLF line ends, and an empty line after it.
    header = signed[signed.index(b"DKIM-Signature:") :].rstrip()
    assert b"\n\t" not in header.replace(b"\r\n", b"")
    outcome = make().check(header + b"\r\n" + MESSAGE, "example.com", soon())
    assert outcome.rescued, outcome
    assert outcome.selector == "odk"


# ARC


def test_a_trusted_sealer_that_saw_spf_pass_rescues(make: Make, keys: dict[str, KeyPair]) -> None:
    listed = MESSAGE.replace(b"Subject: Lunch", b"Subject: [team] Lunch")
    first = seal(
        listed, keys["rsa2048"], "relay.example", "spf=pass smtp.mailfrom=alice@example.com"
    )
    second = seal(
        first,
        keys["rsa2048"],
        SEALER,
        "arc=pass; spf=pass smtp.mailfrom=example.com; dkim=none",
    )
    outcome = make().check(second, "example.com", soon())
    assert outcome.kind is RescueKind.ARC
    assert (outcome.sealer, outcome.domain) == (SEALER, "example.com")
    assert outcome.arc is not None
    assert (outcome.arc.result, outcome.arc.sets, outcome.arc.vouched_by) == (
        AuthResult.PASS,
        2,
        "spf",
    )
    assert outcome.cpu_seconds > 0


def test_an_aligned_dkim_pass_recorded_by_the_sealer_rescues(
    make: Make, keys: dict[str, KeyPair]
) -> None:
    sealed = seal(MESSAGE, keys["rsa2048"], SEALER, "dkim=pass header.d=example.com header.s=x")
    outcome = make(dkim=False).check(sealed, "bounce.example.com", soon())
    assert outcome.rescued and outcome.arc is not None and outcome.arc.vouched_by == "dkim"


def test_a_sealer_below_a_trusted_domain_is_not_trusted(
    make: Make, keys: dict[str, KeyPair], zone: Zone
) -> None:
    zone.publish("arc", f"evil.{SEALER}", keys["rsa2048"].record)
    sealed = seal(MESSAGE, keys["rsa2048"], f"evil.{SEALER}", "spf=pass smtp.mailfrom=example.com")
    outcome = make().check(sealed, "example.com", soon())
    assert (outcome.kind, outcome.reason) == (RescueKind.NONE, Reason.SEALER_UNTRUSTED)
    # Not validated (no arc= result of ours), but who sealed it is reported.
    assert outcome.arc == ArcCheck(None, Reason.SEALER_UNTRUSTED, f"evil.{SEALER}", 1)
    assert zone.asked == []


def test_results_that_vouch_for_another_domain_do_not_rescue(
    make: Make, keys: dict[str, KeyPair]
) -> None:
    sealed = seal(
        MESSAGE,
        keys["rsa2048"],
        SEALER,
        'spf=pass reason="smtp.mailfrom=example.com" smtp.mailfrom=other.example; '
        "dkim=pass header.d=example.net",
    )
    outcome = make().check(sealed, "example.com", soon())
    assert outcome.reason is Reason.NOT_VOUCHED
    assert outcome.arc == ArcCheck(None, Reason.NOT_VOUCHED, SEALER, 1)


def test_a_message_changed_after_sealing_fails_the_chain(
    make: Make, keys: dict[str, KeyPair]
) -> None:
    sealed = seal(MESSAGE, keys["rsa2048"], SEALER, "spf=pass smtp.mailfrom=example.com")
    outcome = make().check(sealed.replace(b"noon", b"one"), "example.com", soon())
    assert (outcome.kind, outcome.reason) == (RescueKind.NONE, Reason.CHAIN_INVALID)
    assert outcome.arc is not None
    assert (outcome.arc.result, outcome.arc.sealer, outcome.arc.sets) == (
        AuthResult.FAIL,
        SEALER,
        1,
    )
    # dkimpy's reason, for the log: which signature of the chain broke.
    assert "ARC-Message-Signature" in outcome.arc.detail


def test_dns_trouble_on_a_seal_key_defers(make: Make, keys: dict[str, KeyPair], zone: Zone) -> None:
    zone.errors[f"arc._domainkey.{SEALER}"] = TempError("timeout")
    sealed = seal(MESSAGE, keys["rsa2048"], SEALER, "spf=pass smtp.mailfrom=example.com")
    outcome = make().check(sealed, "example.com", soon())
    assert (outcome.kind, outcome.reason) == (RescueKind.TEMPORARY, Reason.KEY_TEMPERROR)
    assert outcome.arc == ArcCheck(
        AuthResult.TEMPERROR, Reason.KEY_TEMPERROR, SEALER, 1, detail="timeout"
    )


def test_a_chain_of_50_sets_is_checked_and_51_fail_unread(
    make: Make, keys: dict[str, KeyPair], zone: Zone
) -> None:
    message = MESSAGE
    for _ in range(50):
        message = seal(message, keys["rsa1024"], SEALER, "spf=pass smtp.mailfrom=example.com")
    fifty = message
    # dkimpy will not seal a 51st set: copy the 50th under i=51.
    newest = message[: message.index(b"Authentication-Results:")]
    message = newest.replace(b"i=50", b"i=51") + message
    zone.records[f"arc._domainkey.{SEALER}"] = [keys["rsa1024"].record]
    outcome = make().check(fifty, "example.com", soon())
    assert outcome.rescued and outcome.arc is not None and outcome.arc.sets == 50
    zone.asked.clear()
    outcome = make().check(message, "example.com", soon())
    assert (outcome.kind, outcome.reason) == (RescueKind.NONE, Reason.CHAIN_TOO_LONG)
    assert zone.asked == []


# Bounds and hostile input


def test_a_huge_header_is_refused_unparsed(make: Make, keys: dict[str, KeyPair]) -> None:
    filler = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 200) for i in range(2000))
    outcome = make().check(filler + sign(MESSAGE, keys["rsa2048"]), "example.com", soon())
    assert outcome.reason is Reason.HEADER_TOO_LARGE
    assert outcome.cpu_seconds > 0


def test_too_many_header_fields(make: Make, keys: dict[str, KeyPair]) -> None:
    filler = b"X: y\r\n" * 1001
    outcome = make().check(filler + sign(MESSAGE, keys["rsa2048"]), "example.com", soon())
    assert outcome.reason is Reason.HEADER_TOO_LARGE


def test_thousands_of_signatures_cost_at_most_eight_verifications(
    make: Make, keys: dict[str, KeyPair], zone: Zone
) -> None:
    header = sign(MESSAGE, keys["rsa2048"])[: -len(MESSAGE)]
    message = header * 400 + MESSAGE.replace(b"noon", b"one")
    started = time.thread_time()
    outcome = make().check(message, "example.com", soon())
    assert time.thread_time() - started < 1.0
    assert outcome.reason is Reason.BODY_HASH
    assert sum(c.reason is Reason.NOT_EXAMINED for c in outcome.dkim) == 392
    # Those are not read: nothing of them reaches Authentication-Results.
    assert outcome.dkim[8] == DkimCheck("", "", "", None, Reason.NOT_EXAMINED, False)
    assert zone.asked == ["sel._domainkey.example.com"]


def test_a_64kb_key_record_is_refused(make: Make, keys: dict[str, KeyPair], zone: Zone) -> None:
    zone.publish("big", "example.com", b"v=DKIM1; k=rsa; n=" + b"x" * 65536 + b"; p=AAAA")
    outcome = make().check(sign(MESSAGE, keys["rsa2048"], selector="big"), "example.com", soon())
    assert outcome.reason is Reason.KEY_RECORD_TOO_LARGE


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (rb"bh=", rb"bh=!!!"),  # broken base64 in bh=
        (rb"bh=", rb"bh=A"),  # bh= of bad length
        (rb" b=", rb" b=%%%%"),  # broken base64 in b=
        (rb"d=example.com", rb"d=example.com; d=example.com"),  # duplicate tag
        (rb"a=rsa-sha256", rb"a=rsa-sha256; l=x"),
        (rb"a=rsa-sha256", rb"a=rsa-sha256; c=fancy/simple"),
        (rb"s=sel", rb"s=\xff\xfe"),
        (rb"v=1", rb"v=2"),
        (rb"a=rsa-sha256", rb"a=rsa-sha256; x=1"),  # expired long ago
    ],
)
def test_malformed_signatures_get_a_result(
    make: Make, keys: dict[str, KeyPair], old: bytes, new: bytes
) -> None:
    signed = sign(MESSAGE, keys["rsa2048"])
    outcome = make(sealers=frozenset()).check(signed.replace(old, new, 1), "example.com", soon())
    assert outcome.kind is RescueKind.NONE
    assert outcome.dkim and outcome.dkim[0].result is not AuthResult.PASS


def test_an_ed25519_signature_of_the_wrong_length(make: Make, keys: dict[str, KeyPair]) -> None:
    signed = sign(MESSAGE, keys["ed25519"], selector="ed")
    start = signed.index(b" b=") + 3
    end = signed.index(b"\r\n", start)
    broken = signed[:start] + b"AAAA" + signed[end:]
    outcome = make().check(broken, "example.com", soon())
    assert outcome.kind is RescueKind.NONE
    assert outcome.dkim[0].result is AuthResult.PERMERROR


def test_a_huge_signature_field(make: Make, keys: dict[str, KeyPair]) -> None:
    signed = sign(MESSAGE, keys["rsa2048"])
    padded = signed.replace(b"h=", b"h=" + b" " * 5000 + b"x :", 1)
    started = time.thread_time()
    outcome = make().check(padded, "example.com", soon())
    assert time.thread_time() - started < 0.5
    assert outcome.reason is Reason.SIGNATURE_TOO_LARGE


def test_white_space_in_a_signature_field_costs_little(
    make: Make, keys: dict[str, KeyPair]
) -> None:
    signed = sign(MESSAGE, keys["rsa2048"])
    padded = signed.replace(b"h=", b"h=" + b" " * 3500 + b"!", 1)
    started = time.thread_time()
    make().check(padded, "example.com", soon())
    assert time.thread_time() - started < 0.5


def test_runs_of_white_space_in_the_body_take_linear_time(
    make: Make, keys: dict[str, KeyPair]
) -> None:
    """dkimpy's relaxed body canonicalization is quadratic in a run of
    spaces not followed by a line end: 300 KB of them took minutes."""
    header = MESSAGE[: MESSAGE.index(b"\r\n\r\n") + 4]
    # Signed as the relaxed canonical form (dkimpy's signer is as slow), which
    # is the same for one space and for 300,000.
    signed = sign(header + b"x x\r\n", keys["rsa2048"])
    message = signed.replace(b"x x\r\n", b"x" + b" " * 300_000 + b"x\r\n")
    started = time.thread_time()
    outcome = make().check(message, "example.com", soon())
    assert time.thread_time() - started < 0.5
    assert outcome.rescued


def test_the_cpu_budget_stops_the_verification(make: Make, keys: dict[str, KeyPair]) -> None:
    # Each reading of the clock takes a second: enough for one signature.
    ticks = iter(range(0, 1000))
    outcome = make(limits=RescueLimits(cpu_budget=4.5), cpu_clock=lambda: float(next(ticks))).check(
        sign(sign(MESSAGE, keys["rsa2048"]), keys["rsa2048"]).replace(b"noon", b"x"),
        "example.com",
        soon(),
    )
    assert (outcome.kind, outcome.reason) == (RescueKind.NONE, Reason.CPU_BUDGET)
    # What was found before the budget ran out is still reported, with its cost.
    assert [c.reason for c in outcome.dkim] == [Reason.BODY_HASH]
    assert outcome.cpu_seconds > 0


def test_the_deadline_defers(make: Make, keys: dict[str, KeyPair]) -> None:
    outcome = make().check(sign(MESSAGE, keys["rsa2048"]), "example.com", time.monotonic() - 1)
    assert (outcome.kind, outcome.reason) == (RescueKind.TEMPORARY, Reason.DEADLINE)


def test_no_header_end_and_garbage(make: Make) -> None:
    for message in (
        b"",
        b"\r\n\r\n",
        b"not a header line\r\n\r\nbody",
        b"\xff\xfe: x\r\n",
        b" continued\r\nFrom: a@example.com\r\n\r\n",
    ):
        outcome = make().check(message, "example.com", soon())
        assert outcome.kind is RescueKind.NONE


def test_parallel_verifications_agree(make: Make, keys: dict[str, KeyPair]) -> None:
    """Callbacks run in parallel threads: each verification keeps to its own
    objects."""
    good = sign(MESSAGE, keys["rsa2048"])
    bad = good.replace(b"noon", b"one")
    rescuer = make()
    results: list[tuple[bool, bool]] = []

    def work() -> None:
        for _ in range(20):
            results.append(
                (
                    rescuer.check(good, "example.com", soon()).rescued,
                    rescuer.check(bad, "example.com", soon()).rescued,
                )
            )

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [(True, False)] * 160


# What goes into Authentication-Results (RFC 8601, RFC 8617 section 7.2)


def test_a_passing_signature_is_reported_with_its_header_b(
    make: Make, keys: dict[str, KeyPair]
) -> None:
    signed = sign(MESSAGE, keys["rsa2048"])
    # b= may be folded anywhere (RFC 6376 section 3.5): header.b leaves the
    # folding out, so that it matches the signature in the field.
    start = signed.index(b" b=") + 6
    folded = signed[:start] + b"\r\n " + signed[start:]
    outcome = make().check(folded, "example.com", soon())
    assert outcome.dkim == (
        DkimCheck("example.com", "sel", header_b(signed), AuthResult.PASS, Reason.DKIM, True),
    )
    assert len(outcome.dkim[0].signature) == 8


def test_a_signature_without_a_is_malformed_not_weak(make: Make, keys: dict[str, KeyPair]) -> None:
    """RFC 6376 section 6.1.1: a missing required tag is a PERMFAIL, not a
    local policy on algorithms."""
    signed = sign(MESSAGE, keys["rsa2048"]).replace(b"a=rsa-sha256; ", b"", 1)
    outcome = make().check(signed, "example.com", soon())
    assert outcome.dkim == (
        DkimCheck("", "", "", AuthResult.PERMERROR, Reason.MALFORMED_SIGNATURE, False),
    )
    assert outcome.reason is Reason.MALFORMED_SIGNATURE


def test_a_signature_without_b_has_no_header_b(make: Make, keys: dict[str, KeyPair]) -> None:
    signed = sign(MESSAGE, keys["rsa2048"])
    unsigned = signed[: signed.index(b" b=")] + signed[signed.index(b"Received:") :]
    (check,) = make().check(unsigned, "example.com", soon()).dkim
    assert (check.domain, check.selector, check.signature) == ("example.com", "sel", "")
    assert (check.result, check.reason) == (AuthResult.PERMERROR, Reason.MALFORMED_SIGNATURE)
    assert check.detail.startswith("missing")


def test_rsa_sha1_is_reported_as_policy_with_the_algorithm(
    make: Make, keys: dict[str, KeyPair]
) -> None:
    message = sign(MESSAGE, keys["rsa2048"], signature_algorithm=b"rsa-sha1")
    outcome = make().check(message, "example.com", soon())
    assert outcome.dkim == (
        DkimCheck(
            "example.com",
            "sel",
            header_b(message),
            AuthResult.POLICY,
            Reason.WEAK_ALGORITHM,
            True,
            "rsa-sha1",
        ),
    )


@pytest.mark.parametrize(
    ("old", "new", "tag"),
    [
        (rb"bh=", rb"bh=!!!", "bh="),
        (rb"v=1", rb"v=2", "v="),
        (rb"a=rsa-sha256", rb"a=rsa-sha256; x=1", "x="),
    ],
)
def test_a_malformed_signature_says_which_tag(
    make: Make, keys: dict[str, KeyPair], old: bytes, new: bytes, tag: str
) -> None:
    message = sign(MESSAGE, keys["rsa2048"]).replace(old, new, 1)
    (check,) = make().check(message, "example.com", soon()).dkim
    assert (check.domain, check.selector, check.aligned) == ("example.com", "sel", True)
    assert (check.result, check.reason) == (AuthResult.PERMERROR, Reason.MALFORMED_SIGNATURE)
    assert tag in check.detail


def test_an_ed25519_signature_of_the_wrong_length_is_a_permerror_with_a_detail(
    make: Make, keys: dict[str, KeyPair]
) -> None:
    signed = sign(MESSAGE, keys["ed25519"], selector="ed")
    start = signed.index(b" b=") + 3
    broken = signed[:start] + b"AAAA\r\n" + signed[signed.index(b"Received:") :]
    (check,) = make().check(broken, "example.com", soon()).dkim
    assert (check.result, check.reason) == (AuthResult.PERMERROR, Reason.MALFORMED_SIGNATURE)
    assert check.signature == "AAAA"
    assert "64" in check.detail


def test_the_signature_field_bound_is_inclusive(
    make: Make, keys: dict[str, KeyPair], zone: Zone
) -> None:
    message = sign(MESSAGE, keys["rsa2048"])
    size = len(field_values(message, b"dkim-signature")[0])
    assert (
        make(limits=RescueLimits(max_signature_field_bytes=size))
        .check(message, "example.com", soon())
        .rescued
    )
    zone.asked.clear()
    outcome = make(limits=RescueLimits(max_signature_field_bytes=size - 1)).check(
        message, "example.com", soon()
    )
    # Not read at all: nothing of it reaches Authentication-Results.
    assert outcome.dkim == (
        DkimCheck("", "", "", AuthResult.PERMERROR, Reason.SIGNATURE_TOO_LARGE, False),
    )
    assert zone.asked == []


def test_the_signed_fields_bound_is_inclusive(
    make: Make, keys: dict[str, KeyPair], zone: Zone
) -> None:
    message = sign(MESSAGE, keys["rsa2048"])
    value = field_values(message, b"dkim-signature")[0]
    names = value[value.index(b"h=") :].split(b";")[0].count(b":") + 1
    assert (
        make(limits=RescueLimits(max_signed_fields=names))
        .check(message, "example.com", soon())
        .rescued
    )
    zone.asked.clear()
    outcome = make(limits=RescueLimits(max_signed_fields=names - 1)).check(
        message, "example.com", soon()
    )
    assert outcome.dkim == (
        DkimCheck(
            "example.com",
            "sel",
            header_b(message),
            AuthResult.POLICY,
            Reason.TOO_MANY_SIGNED,
            True,
            str(names),
        ),
    )
    assert zone.asked == []


def test_a_length_limited_signature_over_runs_of_white_space_is_checked_in_linear_time(
    make: Make, keys: dict[str, KeyPair]
) -> None:
    """l= is compared with the relaxed canonical body (RFC 6376 section
    3.4.4), which dkimpy would compute in quadratic time."""
    header = MESSAGE[: MESSAGE.index(b"\r\n\r\n") + 4]
    signed = sign(header + b"x x\r\n", keys["rsa2048"], length=True)
    message = signed.replace(b"x x\r\n", b"x" + b" " * 40_000 + b"x\r\n")
    started = time.thread_time()
    outcome = make().check(message, "example.com", soon())
    assert time.thread_time() - started < 0.5
    assert outcome.rescued


def test_dkimpy_logs_nothing_of_what_senders_control(
    make: Make, keys: dict[str, KeyPair], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    signed = sign(MESSAGE, keys["rsa2048"], selector="gone")
    sealed = seal(signed, keys["rsa2048"], SEALER, "spf=pass smtp.mailfrom=example.com")
    outcome = make().check(sealed.replace(b"noon", b"one"), "example.com", soon())
    assert outcome.reason is Reason.KEY_NOT_FOUND
    assert outcome.arc is not None and outcome.arc.reason is Reason.CHAIN_INVALID
    assert caplog.records == []


def test_no_chain_is_arc_none(make: Make) -> None:
    outcome = make(dkim=False).check(MESSAGE, "example.com", soon())
    assert outcome.arc == ArcCheck(AuthResult.NONE, Reason.NO_CHAIN)
    assert outcome.reason is Reason.NO_CHAIN


def test_a_list_that_changed_the_subject_passes_with_oldest_pass(
    make: Make, keys: dict[str, KeyPair]
) -> None:
    """RFC 8617 section 5.2: only the newest AMS must validate; the first
    hop's no longer does after the list's change, so header.oldest-pass
    is the list's instance."""
    first = seal(MESSAGE, keys["rsa2048"], "relay.example", "spf=pass smtp.mailfrom=example.com")
    changed = first.replace(b"Subject: Lunch", b"Subject: [team] Lunch")
    second = seal(changed, keys["rsa2048"], SEALER, "spf=pass smtp.mailfrom=example.com")
    outcome = make().check(second, "example.com", soon())
    assert outcome.arc == ArcCheck(
        AuthResult.PASS, Reason.ARC, SEALER, 2, oldest_pass=2, vouched_by="spf"
    )
    unchanged = seal(first, keys["rsa2048"], SEALER, "spf=pass smtp.mailfrom=example.com")
    outcome = make().check(unchanged, "example.com", soon())
    assert outcome.arc == ArcCheck(
        AuthResult.PASS, Reason.ARC, SEALER, 2, oldest_pass=0, vouched_by="spf"
    )


def test_a_chain_with_lf_line_ends_is_read(make: Make, keys: dict[str, KeyPair]) -> None:
    sealed = seal(MESSAGE, keys["rsa2048"], SEALER, "spf=pass smtp.mailfrom=example.com")
    outcome = make().check(sealed.replace(b"\r\n", b"\n"), "example.com", soon())
    assert outcome.arc == ArcCheck(
        AuthResult.PASS, Reason.ARC, SEALER, 1, oldest_pass=0, vouched_by="spf"
    )


def test_the_arc_field_bound_is_inclusive(make: Make, keys: dict[str, KeyPair], zone: Zone) -> None:
    sealed = seal(MESSAGE, keys["rsa2048"], SEALER, "spf=pass smtp.mailfrom=example.com")
    size = max(
        len(value)
        for name in (b"arc-seal", b"arc-message-signature", b"arc-authentication-results")
        for value in field_values(sealed, name)
    )
    limits = RescueLimits(max_signature_field_bytes=size)
    assert make(dkim=False, limits=limits).check(sealed, "example.com", soon()).rescued
    zone.asked.clear()
    limits = RescueLimits(max_signature_field_bytes=size - 1)
    outcome = make(dkim=False, limits=limits).check(sealed, "example.com", soon())
    assert outcome.arc == ArcCheck(AuthResult.FAIL, Reason.CHAIN_INVALID)
    assert zone.asked == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"ARC-Seal: i=1;", b"ARC-Seal: i=x;"),
        (b"ARC-Seal: i=1;", b"ARC-Seal: i=0000000001;"),
        (b"ARC-Seal: i=1;", b"ARC-Seal: cv=none;"),
        (b"ARC-Authentication-Results: i=1;", b"ARC-Authentication-Results: i=x;"),
        (b"ARC-Authentication-Results: i=1;", b"ARC-Authentication-Results: "),
    ],
)
def test_an_arc_field_without_a_readable_instance_fails_the_chain_unread(
    make: Make, keys: dict[str, KeyPair], zone: Zone, old: bytes, new: bytes
) -> None:
    sealed = seal(MESSAGE, keys["rsa2048"], SEALER, "spf=pass smtp.mailfrom=example.com")
    zone.asked.clear()
    outcome = make().check(sealed.replace(old, new, 1), "example.com", soon())
    assert (outcome.kind, outcome.reason) == (RescueKind.NONE, Reason.CHAIN_INVALID)
    assert outcome.arc == ArcCheck(AuthResult.FAIL, Reason.CHAIN_INVALID)
    assert zone.asked == []


def test_an_instance_of_nine_digits_is_read_as_its_number(
    make: Make, keys: dict[str, KeyPair]
) -> None:
    sealed = seal(MESSAGE, keys["rsa2048"], SEALER, "spf=pass smtp.mailfrom=example.com")
    padded = sealed.replace(b"ARC-Seal: i=1;", b"ARC-Seal: i=000000001;")
    outcome = make().check(padded, "example.com", soon())
    # One set, verified (and failed: the seal signs its own i=).
    assert outcome.arc is not None
    assert (outcome.arc.result, outcome.arc.sealer, outcome.arc.sets) == (
        AuthResult.FAIL,
        SEALER,
        1,
    )
    assert "ARC-Seal" in outcome.arc.detail


def test_a_lone_set_numbered_beyond_50_is_too_long(make: Make, keys: dict[str, KeyPair]) -> None:
    sealed = seal(MESSAGE, keys["rsa2048"], SEALER, "spf=pass smtp.mailfrom=example.com")
    outcome = make().check(sealed.replace(b": i=1;", b": i=51;"), "example.com", soon())
    assert outcome.arc == ArcCheck(AuthResult.FAIL, Reason.CHAIN_TOO_LONG, sets=1)


@pytest.mark.parametrize(
    "missing",
    [b"ARC-Seal: i=2;", b"ARC-Authentication-Results: i=2;", b"ARC-Message-Signature: i=1;"],
)
def test_an_incomplete_set_fails_the_chain(
    make: Make, keys: dict[str, KeyPair], zone: Zone, missing: bytes
) -> None:
    first = seal(MESSAGE, keys["rsa2048"], "relay.example", "spf=pass smtp.mailfrom=example.com")
    second = seal(first, keys["rsa2048"], SEALER, "spf=pass smtp.mailfrom=example.com")
    zone.asked.clear()
    outcome = make().check(without(second, missing), "example.com", soon())
    assert outcome.arc == ArcCheck(AuthResult.FAIL, Reason.CHAIN_INVALID, sets=2)
    assert zone.asked == []


def test_a_newest_simple_body_over_an_older_relaxed_one_is_unsupported(
    make: Make, keys: dict[str, KeyPair], zone: Zone
) -> None:
    first = seal(MESSAGE, keys["rsa2048"], "relay.example", "spf=pass smtp.mailfrom=example.com")
    second = seal(first, keys["rsa2048"], SEALER, "spf=pass smtp.mailfrom=example.com")
    newest = b"ARC-Message-Signature: i=2; a=rsa-sha256; c=relaxed/"
    simple = second.replace(newest + b"relaxed", newest + b"simple")
    zone.asked.clear()
    outcome = make().check(simple, "example.com", soon())
    assert outcome.arc == ArcCheck(AuthResult.FAIL, Reason.ARC_UNSUPPORTED, sets=2)
    assert zone.asked == []
    # Without c=, dkimpy canonicalizes an AMS relaxed: no mix.  The newest
    # seal is not trusted here, which is checked next.
    bare = second.replace(newest + b"relaxed;", b"ARC-Message-Signature: i=2; a=rsa-sha256;")
    outcome = make(sealers=frozenset({"relay.example"})).check(bare, "example.com", soon())
    assert outcome.arc == ArcCheck(None, Reason.SEALER_UNTRUSTED, SEALER, 2)


def test_an_ams_instance_dkimpy_cannot_find_fails_the_chain(
    make: Make, keys: dict[str, KeyPair]
) -> None:
    sealed = seal(MESSAGE, keys["rsa2048"], SEALER, "spf=pass smtp.mailfrom=example.com")
    # Valid tag-list syntax (RFC 6376 section 3.2), but dkimpy looks for " i=1;".
    spaced = sealed.replace(b"ARC-Message-Signature: i=1;", b"ARC-Message-Signature: i =1;")
    outcome = make().check(spaced, "example.com", soon())
    assert outcome.arc is not None
    assert (outcome.arc.result, outcome.arc.reason) == (AuthResult.FAIL, Reason.CHAIN_INVALID)
    assert (outcome.arc.sealer, outcome.arc.sets) == (SEALER, 1)
    assert "index" in outcome.arc.detail


def test_the_key_size_floor_applies_to_seals_as_configured(
    make: Make, keys: dict[str, KeyPair], zone: Zone
) -> None:
    zone.publish("arc", "small.example", keys["rsa512"].record)
    sealed = seal(MESSAGE, keys["rsa512"], "small.example", "spf=pass smtp.mailfrom=example.com")
    sealers = frozenset({"small.example"})
    outcome = make(sealers=sealers).check(sealed, "example.com", soon())
    assert not outcome.rescued
    lowered = make(sealers=sealers, limits=RescueLimits(min_key_bits=512))
    assert lowered.check(sealed, "example.com", soon()).rescued
    # And to DKIM keys, which dkimpy checks too.
    signed = sign(MESSAGE, keys["rsa512"], selector="tiny")
    assert lowered.check(signed, "example.com", soon()).kind is RescueKind.DKIM


def test_white_space_runs_under_a_seal_take_linear_time(
    make: Make, keys: dict[str, KeyPair]
) -> None:
    header = MESSAGE[: MESSAGE.index(b"\r\n\r\n") + 4]
    sealed = seal(
        header + b"x x\r\n", keys["rsa2048"], SEALER, "spf=pass smtp.mailfrom=example.com"
    )
    message = sealed.replace(b"x x\r\n", b"x" + b" " * 40_000 + b"x\r\n")
    started = time.thread_time()
    outcome = make().check(message, "example.com", soon())
    assert time.thread_time() - started < 0.5
    assert outcome.rescued


def test_dns_trouble_on_the_seal_keeps_what_dkim_found(
    make: Make, keys: dict[str, KeyPair], zone: Zone
) -> None:
    zone.errors[f"arc._domainkey.{SEALER}"] = TempError("timeout")
    signed = sign(MESSAGE, keys["rsa2048"], domain="forwarder.example")
    sealed = seal(signed, keys["rsa2048"], SEALER, "spf=pass smtp.mailfrom=example.com")
    outcome = make().check(sealed, "example.com", soon())
    assert (outcome.kind, outcome.reason) == (RescueKind.TEMPORARY, Reason.KEY_TEMPERROR)
    assert [(c.domain, c.reason) for c in outcome.dkim] == [("forwarder.example", Reason.UNALIGNED)]
    assert outcome.arc is not None and outcome.arc.result is AuthResult.TEMPERROR
    assert outcome.cpu_seconds > 0


@pytest.mark.parametrize("line_end", [b"\r\n", b"\n"])
def test_arc_fields_are_unfolded_before_they_are_read(
    make: Make, keys: dict[str, KeyPair], line_end: bytes
) -> None:
    """RFC 5322 section 3.2.2: unfolding removes each line end before white
    space, so none reaches the sealer reported (a fold inside d= is the
    sender's doing, and the seal no longer verifies)."""
    sealed = seal(MESSAGE, keys["rsa2048"], SEALER, "spf=pass smtp.mailfrom=example.com")
    folded = sealed.replace(b"d=lists.example.org; s=arc;", b"d=lists.\r\n example.org; s=arc;", 1)
    outcome = make().check(folded.replace(b"\r\n", line_end), "example.com", soon())
    assert outcome.arc is not None and outcome.arc.reason is Reason.SEALER_UNTRUSTED
    assert outcome.arc.sealer == "lists. example.org"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b" d=lists.example.org; s=arc;", b" s=arc;"),  # a seal without d=
        (b"c=relaxed/relaxed", b"c=fancy/relaxed"),  # an AMS c= naming nothing
    ],
)
def test_a_set_whose_tags_cannot_be_read_fails_the_chain_unverified(
    make: Make, keys: dict[str, KeyPair], zone: Zone, old: bytes, new: bytes
) -> None:
    sealed = seal(MESSAGE, keys["rsa2048"], SEALER, "spf=pass smtp.mailfrom=example.com")
    assert old in sealed
    zone.asked.clear()
    outcome = make().check(sealed.replace(old, new, 1), "example.com", soon())
    assert outcome.arc == ArcCheck(AuthResult.FAIL, Reason.CHAIN_INVALID, sets=1)
    assert zone.asked == []


def test_dns_trouble_on_the_key_keeps_what_arc_found(
    make: Make, keys: dict[str, KeyPair], zone: Zone
) -> None:
    zone.errors["sel._domainkey.example.com"] = TempError("timeout")
    signed = sign(MESSAGE, keys["rsa2048"])
    sealed = seal(signed, keys["rsa2048"], SEALER, "spf=fail smtp.mailfrom=example.com")
    outcome = make().check(sealed, "example.com", soon())
    assert (outcome.kind, outcome.reason) == (RescueKind.TEMPORARY, Reason.KEY_TEMPERROR)
    assert outcome.arc == ArcCheck(None, Reason.NOT_VOUCHED, SEALER, 1)
    # What the verification cost goes to the metrics.
    assert outcome.cpu_seconds > 0


def test_a_refusal_reports_what_the_verification_cost(make: Make, keys: dict[str, KeyPair]) -> None:
    message = sign(MESSAGE, keys["rsa2048"]).replace(b"noon", b"one")
    outcome = make().check(message, "example.com", soon())
    assert (outcome.kind, outcome.reason) == (RescueKind.NONE, Reason.BODY_HASH)
    assert outcome.cpu_seconds > 0


def test_a_selector_that_is_not_utf8_is_reported_with_replacement_characters(
    make: Make, keys: dict[str, KeyPair]
) -> None:
    signed = sign(MESSAGE, keys["rsa2048"]).replace(b"s=sel;", b"s=s\xffl;", 1)
    outcome = make().check(signed, "example.com", soon())
    assert outcome.kind is RescueKind.NONE
    assert outcome.dkim[0].selector == "s\ufffdl"
    assert outcome.dkim[0].reason is Reason.KEY_NOT_FOUND


def test_the_header_bound_at_its_edge(make: Make, keys: dict[str, KeyPair]) -> None:
    message = sign(MESSAGE, keys["rsa2048"])
    # Read while the empty line ends within the bound plus its 3 bytes
    # (LF CR LF): the fields up to the CR of the last one's line end.
    size = message.index(b"\r\n\r\n") + 1
    assert (
        make(limits=RescueLimits(max_header_bytes=size))
        .check(message, "example.com", soon())
        .rescued
    )
    outcome = make(limits=RescueLimits(max_header_bytes=size - 1)).check(
        message, "example.com", soon()
    )
    assert (outcome.kind, outcome.reason) == (RescueKind.NONE, Reason.HEADER_TOO_LARGE)


def test_a_message_of_header_fields_only_within_the_bound_is_read(
    make: Make, keys: dict[str, KeyPair]
) -> None:
    header = MESSAGE[: MESSAGE.index(b"\r\n\r\n") + 2]
    message = sign(header, keys["rsa2048"])
    assert b"\r\n\r\n" not in message
    limits = RescueLimits(max_header_bytes=len(message))
    assert make(limits=limits).check(message, "example.com", soon()).rescued


def test_the_header_fields_bound_is_inclusive(make: Make, keys: dict[str, KeyPair]) -> None:
    message = sign(MESSAGE, keys["rsa2048"])
    fields = len(dkim.rfc822_parse(message)[0])
    assert (
        make(limits=RescueLimits(max_header_fields=fields))
        .check(message, "example.com", soon())
        .rescued
    )
    outcome = make(limits=RescueLimits(max_header_fields=fields - 1)).check(
        message, "example.com", soon()
    )
    assert outcome.reason is Reason.HEADER_TOO_LARGE


def test_the_cpu_budget_grows_with_the_message(make: Make, keys: dict[str, KeyPair]) -> None:
    message = sign(MESSAGE, keys["rsa2048"])
    message += b"y" * (1_000_000 - len(message))
    clock = itertools.chain([0.0], itertools.repeat(0.5))
    limits = RescueLimits(cpu_budget=0.1, cpu_per_megabyte=1.0)
    outcome = make(limits=limits, cpu_clock=lambda: next(clock)).check(
        message, "example.com", soon()
    )
    # 0.5 s used of 0.1 + 1.0 x 1 MB: not stopped; the appended body breaks
    # the body hash.
    assert outcome.reason is Reason.BODY_HASH


def test_a_sealer_list_of_only_the_root_checks_no_chain(
    make: Make, keys: dict[str, KeyPair]
) -> None:
    sealed = seal(MESSAGE, keys["rsa2048"], SEALER, "spf=pass smtp.mailfrom=example.com")
    outcome = make(sealers=frozenset({"."})).check(sealed, "example.com", soon())
    assert outcome.arc is None


def test_an_arc_rescue_keeps_the_dkim_results(make: Make, keys: dict[str, KeyPair]) -> None:
    """The list changed the signed Subject, then sealed: the author's DKIM
    fail still goes into Authentication-Results beside arc=pass."""
    changed = sign(MESSAGE, keys["rsa2048"]).replace(b"Subject: Lunch", b"Subject: [team] Lunch")
    sealed = seal(changed, keys["rsa2048"], SEALER, "spf=pass smtp.mailfrom=example.com")
    outcome = make().check(sealed, "example.com", soon())
    assert outcome.kind is RescueKind.ARC
    assert [(c.domain, c.result) for c in outcome.dkim] == [("example.com", AuthResult.FAIL)]


def test_the_key_bounds_are_the_configured_ones(make: Make, keys: dict[str, KeyPair]) -> None:
    message = sign(MESSAGE, keys["rsa2048"])
    outcome = make(limits=RescueLimits(max_key_bits=1024)).check(message, "example.com", soon())
    assert outcome.dkim[0].reason is Reason.KEY_TOO_LARGE
    outcome = make(limits=RescueLimits(max_key_names=0)).check(message, "example.com", soon())
    assert outcome.dkim[0].reason is Reason.KEY_NAMES
