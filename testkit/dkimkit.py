"""Keys, signatures, seals and a fake DNS for the rescue's tests: real
dkimpy signatures with keys made here (openssl, PyNaCl, opendkim-genkey)."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dkim
import nacl.signing

Record = tuple[tuple[str, str], object]


class TempError(Exception):
    """The resolver's DNS trouble (DnsTempError in spfmilter.dns)."""


class LimitError(Exception):
    """The resolver's refusal of an oversized answer (DnsLimitError)."""


@dataclass(frozen=True)
class KeyPair:
    """A private key as dkimpy signs with it, and its DNS record."""

    private: bytes
    record: bytes
    algorithm: bytes = b"rsa-sha256"


def rsa_key(bits: int, directory: Path) -> KeyPair:
    """A new RSA key of `bits` bits (openssl)."""
    path = directory / f"rsa{bits}.pem"
    subprocess.run(
        ["openssl", "genrsa", "-out", str(path), str(bits)], check=True, capture_output=True
    )
    der = subprocess.run(
        ["openssl", "rsa", "-in", str(path), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    return KeyPair(path.read_bytes(), b"v=DKIM1; k=rsa; p=" + base64.b64encode(der))


def ed25519_key() -> KeyPair:
    """A new Ed25519 key (RFC 8463)."""
    signing = nacl.signing.SigningKey.generate()
    public = base64.b64encode(bytes(signing.verify_key))
    return KeyPair(
        base64.b64encode(bytes(signing)), b"v=DKIM1; k=ed25519; p=" + public, b"ed25519-sha256"
    )


def opendkim_key(directory: Path, domain: str, selector: str) -> KeyPair:
    """A 2048-bit key made by OpenDKIM's opendkim-genkey, its record read
    from the zone file line it writes."""
    subprocess.run(
        ["opendkim-genkey", "-b", "2048", "-d", domain, "-s", selector, "-D", str(directory)],
        check=True,
    )
    zone = (directory / f"{selector}.txt").read_text()
    record = "".join(zone[zone.index("(") + 1 : zone.index(")")].split('"')[1::2])
    return KeyPair((directory / f"{selector}.private").read_bytes(), record.encode())


@dataclass
class Zone:
    """A fake resolver lookup: TXT records by name, or an exception to
    raise; it notes every question."""

    records: dict[str, list[bytes]] = field(default_factory=dict)
    errors: dict[str, Exception] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)

    def publish(self, selector: str, domain: str, record: bytes) -> None:
        self.records.setdefault(f"{selector}._domainkey.{domain}", []).append(record)

    def lookup(self, name: str, qtype: str, budget: float | None) -> Sequence[Record]:
        self.asked.append(name)
        assert qtype == "TXT"
        error = self.errors.get(name)
        if error is not None:
            raise error
        # Character-strings of at most 255 bytes (RFC 1035 section 3.3.14).
        return [
            ((name, "TXT"), tuple(text[i : i + 255] for i in range(0, len(text), 255)))
            for text in self.records.get(name, [])
        ]


MESSAGE = (
    b"Received: from mx.forwarder.example by mx.example.net; Mon, 1 Jan 2024 00:00:01 +0000\r\n"
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@forwarder.example\r\n"
    b"Subject: Lunch\r\n"
    b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"Message-ID: <1@example.com>\r\n"
    b"\r\n"
    b"Shall we meet at noon?\r\n"
    b"  Alice\r\n"
)


def sign(
    message: bytes,
    key: KeyPair,
    domain: str = "example.com",
    selector: str = "sel",
    **options: object,
) -> bytes:
    """`message` with a DKIM-Signature of `domain` on top (relaxed/relaxed
    unless `canonicalize` says otherwise)."""
    options.setdefault("canonicalize", (b"relaxed", b"relaxed"))
    options.setdefault("signature_algorithm", key.algorithm)
    header = dkim.sign(
        message,
        selector.encode(),
        domain.encode(),
        key.private,
        **options,
    )
    return bytes(header) + message


def seal(
    message: bytes,
    key: KeyPair,
    domain: str,
    results: str,
    selector: str = "arc",
) -> bytes:
    """`message` as a forwarder `domain` passes it on: its own
    Authentication-Results (`results`, without the authserv-id) and the
    next ARC set on top.  dkimpy takes the chain's state from that field's
    arc= result (RFC 8617 section 5.1.1), and every hop has an authserv-id
    of its own."""
    hop = message.count(b"ARC-Seal:") + 1
    authserv_id = f"mx{hop}.{domain}"
    if hop > 1 and "arc=" not in results:
        results = f"arc=pass; {results}"
    stamped = f"Authentication-Results: {authserv_id}; {results}\r\n".encode() + message
    fields = dkim.arc_sign(
        stamped, selector.encode(), domain.encode(), key.private, authserv_id.encode()
    )
    assert fields, "dkimpy made no ARC set"
    return b"".join(fields) + stamped
