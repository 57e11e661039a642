"""Loading, before the privilege drop, everything a rescue may load later.

This module owns the rescue's part of the start-up exercise (the daemon's
warm-up calls exercise() before it drops privileges): DKIM and ARC
verification of canned messages with canned keys, no DNS, through the same
Rescuer the milter uses, so that whatever dkimpy, PyNaCl or the codecs load
on first use is loaded while the installation is still readable.  The
messages were signed once with dkimpy (an RSA key with l=, an Ed25519 key
with simple canonicalization, one ARC set); only the public keys are kept.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence

from spfmilter.config.orgdomain import PublicSuffixes, normalise
from spfmilter.evaluation.rescue import (
    Reason,
    RescueOutcome,
    Rescuer,
    RescueSettings,
)
from spfmilter.evaluation.rescuetext import summary

RSA_RECORD = (
    b"v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDUWP/ezkl7zhR9"
    b"WAJ86udlxIlefxYbtuj0R39I2vhSUXi7GCX2UbaDev95fsWk9smr2/6hBbuKun3WJqyMO9"
    b"2KVOrsTctOR2/b4Tdzba5vjaK+uBJFrvuP+NIDDiicvnQeRTT344tpNykn0rsfLVh1rM/A"
    b"NhvzM5VjPa9MhCiTfQIDAQAB"
)
ED25519_RECORD = b"v=DKIM1; k=ed25519; p=A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="
# The fields and body both messages sign (white space in the body on
# purpose: the canonicalizations differ there).
_SIGNED = (
    b"From: Warm Up <warmup@warmup.example>\r\n"
    b"To: postmaster@warmup.example\r\n"
    b"Subject: warm-up\r\n"
    b"Date: Tue, 1 Jan 2030 00:00:00 +0000\r\n"
    b"Message-ID: <warmup@warmup.example>\r\n"
    b"\r\n"
    b"Loaded  before\t the privilege drop. \r\n"
    b"\r\n"
)
DKIM_MESSAGE = (
    b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=warmup.example;\r\n"
    b" i=@warmup.example; l=35; q=dns/txt; s=rsa; t=1796686845; h=from : to :\r\n"
    b" subject : date : message-id : from;\r\n"
    b" bh=fJTCl4rifjybae7iMJ1eZmVKKtSx20ffQh3kbLH0+YI=;\r\n"
    b" b=j0PfyuF682YPrR2aB7FSL5aQ4u8o+h6FJC3edUg0jktxdRw17dgp8ndO5Dptpe7rb84k7\r\n"
    b" ieP8ca7GVzlHdg3JHupkwwyWEj0tr6ukE5xxcnHjs4QRhDnB4ckqmcdzfV/E2D7zB6w/Oj0\r\n"
    b" phlz8NpIs20Igvgrb7iRFsRoj2y7N/g=\r\n"
    b"DKIM-Signature: v=1; a=ed25519-sha256; c=simple/simple; d=warmup.example;\r\n"
    b" i=@warmup.example; q=dns/txt; s=ed; t=1796686845; h=from : to :\r\n"
    b" subject : date : message-id : from;\r\n"
    b" bh=U9/Qiur1+z6XZBFkVKgJ8VfCykwOSA5ogoW6qQ7X/g0=;\r\n"
    b" b=X6xFYmR/CDST6jeIEn2kI81rQCiK7NwSVg6tee1UkGbH30UOhhb0ZwU1j4eyajnCATKTV\r\n"
    b" 3it4xrpwNdHEAyWBA==\r\n" + _SIGNED
)
ARC_MESSAGE = (
    b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=warmup.example; s=rsa;\r\n"
    b" t=1796686845;\r\n"
    b" b=c2sJF9fQkqXJ2eLJr1KTHjBJi5IV79k51LZ3oYo1NWS/p6jky8eH3friA/MWbPKBY2OpB\r\n"
    b" sYBNYjojYDRqRT+CU7kBDFeStOng6Fw5+OkcLpPfHeyYIA5ujRQj1gZxaZCCDVfHx+Ho8iu\r\n"
    b" Y7kgo0Lkvsh9oXpwjzYUvqZQsK0u5eA=\r\n"
    b"ARC-Message-Signature: i=1; a=rsa-sha256; c=relaxed/relaxed;\r\n"
    b" d=warmup.example; s=rsa; t=1796686845; h=from : to : subject : date :\r\n"
    b" message-id : from; bh=fJTCl4rifjybae7iMJ1eZmVKKtSx20ffQh3kbLH0+YI=;\r\n"
    b" b=GFg/LtHkWqAUpn3dF0RwOgc+vL8vW2G/2wvlqCaHAXEzTfhhlTqgxPWtbU03rmuWib4Uf\r\n"
    b" 76iV//Y1EBPi1iHpZGwC79d2H5LUPbcfMGzyGK3+hP6TcOO7ehiXco8AVEu/pEs5IozesWY\r\n"
    b" U++tbFqe0H4X2xqYsCFbLr8Gm8SsN0M=\r\n"
    b"ARC-Authentication-Results: i=1; mx.warmup.example;\r\n"
    b" spf=pass smtp.mailfrom=warmup.example\r\n"
    b"Authentication-Results: mx.warmup.example; spf=pass smtp.mailfrom=warm"
    b"up.example\r\n" + _SIGNED
)

_ZONE = {
    "rsa._domainkey.warmup.example": RSA_RECORD,
    "ed._domainkey.warmup.example": ED25519_RECORD,
}


# A client address for the ARC resinfo's smtp.remote-ip.
_CLIENT = ipaddress.ip_address("192.0.2.1")


class _CannedTrouble(Exception):
    """The canned lookup's DNS trouble (for the temporary-error path)."""


def _lookup(
    name: str, qtype: str, budget: float | None
) -> Sequence[tuple[tuple[str, str], object]]:
    if name.startswith("trouble._domainkey."):
        raise _CannedTrouble(name)
    record = _ZONE.get(name)
    return [] if record is None else [((name, "TXT"), (record[:255], record[255:]))]


def exercise(suffixes: PublicSuffixes) -> None:
    """Verify the canned messages, good and broken, and write their results.

    `suffixes` is the list the daemon loaded (or one without rules).
    Raises RuntimeError when a canned message does not verify as it did.
    """
    rescuer = Rescuer(
        RescueSettings(dkim=True, arc_trusted_sealers=frozenset({"warmup.example"})),
        suffixes,
        _lookup,
        temporary=(_CannedTrouble,),
    )
    arc_only = Rescuer(
        RescueSettings(arc_trusted_sealers=frozenset({"warmup.example"})),
        suffixes,
        _lookup,
        temporary=(_CannedTrouble,),
    )
    deadline = time.monotonic() + 60
    broken = DKIM_MESSAGE.replace(b"before", b"after")
    expected = [
        (rescuer.check(DKIM_MESSAGE, "warmup.example", deadline), Reason.DKIM),
        (
            rescuer.check(DKIM_MESSAGE.replace(b"s=rsa", b"s=none"), "warmup.example", deadline),
            Reason.DKIM,
        ),
        (rescuer.check(broken + b"appended\r\n", "warmup.example", deadline), Reason.PARTIAL_BODY),
        (rescuer.check(broken, "warmup.example", deadline), Reason.BODY_HASH),
        (arc_only.check(ARC_MESSAGE, "warmup.example", deadline), Reason.ARC),
        (
            arc_only.check(ARC_MESSAGE.replace(b"before", b"after"), "warmup.example", deadline),
            Reason.CHAIN_INVALID,
        ),
        (
            rescuer.check(
                DKIM_MESSAGE.replace(b"s=rsa", b"s=trouble").replace(b"s=ed", b"s=trouble"),
                "warmup.example",
                deadline,
            ),
            Reason.KEY_TEMPERROR,
        ),
    ]
    for outcome, reason in expected:
        _write(outcome)
        if outcome.reason is not reason:
            raise RuntimeError(f"rescue warm-up: expected {reason}, got {outcome}")
    normalise("bücher.warmup.example")


def _write(outcome: RescueOutcome) -> None:
    summary(outcome, _CLIENT)
