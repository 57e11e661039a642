"""After the warm-up, verifying mail imports nothing: checked in a fresh
interpreter, on messages and keys made here."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from spfmilter.config import orgdomain
from spfmilter.evaluation import rescuewarmup
from testkit.dkimkit import MESSAGE, ed25519_key, rsa_key, seal, sign

ROOT = Path(__file__).resolve().parents[3]

# Runs in a fresh interpreter: the warm-up (or not), then verifications of
# the messages in the file named by argv[1]; prints the modules imported by
# the verifications.
CHILD = """
import base64, json, sys, time
from spfmilter.config import orgdomain
from spfmilter.evaluation import rescuewarmup
from spfmilter.evaluation.rescue import Rescuer, RescueSettings
from spfmilter.evaluation.rescuetext import summary

data = json.loads(open(sys.argv[1]).read())
# No list, as where the file is missing: reading it would load the IDNA
# codec's punycode, the one module the rescue loads on first use.
suffixes = orgdomain.PublicSuffixes(problem="none")
if sys.argv[2] == "warm":
    rescuewarmup.exercise(suffixes)
records = {name: base64.b64decode(value) for name, value in data["zone"].items()}

class Trouble(Exception):
    pass

def lookup(name, qtype, budget):
    if name.startswith("trouble"):
        raise Trouble(name)
    record = records.get(name)
    return [] if record is None else [((name, "TXT"), (record,))]

rescuer = Rescuer(
    RescueSettings(dkim=True, arc_trusted_sealers=frozenset({"lists.example.org"})),
    suffixes, lookup, temporary=(Trouble,),
)
before = set(sys.modules)
reasons = []
for domain, message in data["messages"]:
    outcome = rescuer.check(base64.b64decode(message), domain, time.monotonic() + 30)
    summary(outcome)
    reasons.append(outcome.reason.value)
print(json.dumps({"new": sorted(set(sys.modules) - before), "reasons": reasons}))
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("warmup")
    rsa, ed = rsa_key(2048, directory), ed25519_key()
    relaxed = sign(MESSAGE, rsa)
    simple = sign(MESSAGE, rsa, canonicalize=(b"simple", b"simple"), length=True)
    sealed = seal(
        seal(MESSAGE, rsa, "relay.example", "spf=pass smtp.mailfrom=example.com"),
        rsa,
        "lists.example.org",
        "spf=pass smtp.mailfrom=example.com",
    )
    messages = [
        ("example.com", relaxed),
        ("example.com", simple),
        ("example.com", simple + b"appended\r\n"),
        ("example.com", sign(MESSAGE, ed, selector="ed")),
        ("b\u00fccher.example", sign(MESSAGE, rsa, domain="xn--bcher-kva.example")),
        ("example.com", relaxed.replace(b"noon", b"one")),
        ("example.com", relaxed.replace(b"bh=", b"bh=!!!")),
        ("example.com", sign(MESSAGE, rsa, selector="trouble")),
        ("example.com", sealed),
        ("example.com", sealed.replace(b"noon", b"one")),
        ("example.com", b"not a message"),
    ]
    zone = {
        "sel._domainkey.example.com": rsa.record,
        "ed._domainkey.example.com": ed.record,
        "sel._domainkey.xn--bcher-kva.example": rsa.record,
        "arc._domainkey.relay.example": rsa.record,
        "arc._domainkey.lists.example.org": rsa.record,
    }
    path = directory / "corpus.json"
    path.write_text(
        json.dumps(
            {
                "zone": {name: _b64(record) for name, record in zone.items()},
                "messages": [(domain, _b64(message)) for domain, message in messages],
            }
        )
    )
    return path


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def run(corpus: Path, mode: str) -> dict[str, list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(corpus), mode],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    result: dict[str, list[str]] = json.loads(done.stdout)
    return result


def test_after_the_warm_up_verification_imports_nothing(corpus: Path) -> None:
    # Run here too: mutation testing pairs a test with the code it runs in
    # its own process, and the child inherits the mutant under test, so the
    # check below also runs against each change to the warm-up.
    rescuewarmup.exercise(orgdomain.PublicSuffixes(problem="none"))
    result = run(corpus, "warm")
    assert result["new"] == []
    assert result["reasons"] == [
        "dkim",
        "dkim",
        "partial_body",
        "dkim",
        "dkim",
        "body_hash",
        "malformed_signature",
        "key_temperror",
        "arc",
        "chain_invalid",
        "malformed_message",
    ]


def test_without_the_warm_up_the_same_verifications_import(corpus: Path) -> None:
    """What the warm-up is for: this shows the check above can fail.
    dkimpy itself imports everything when it is imported."""
    assert "encodings.punycode" in run(corpus, "cold")["new"]


def test_the_canned_messages_end_in_this_process_as_they_did_when_signed() -> None:
    # exercise() raises RuntimeError when one does not: the start-up stops.
    rescuewarmup.exercise(orgdomain.PublicSuffixes(problem="none"))


@pytest.mark.parametrize(
    ("name", "old", "new"),
    [
        ("DKIM_MESSAGE", b"s=rsa", b"s=none"),
        ("DKIM_MESSAGE", b"Subject: warm-up", b"Subject: warm-down"),
        ("ARC_MESSAGE", b"i=1", b"i=2"),
        ("ARC_MESSAGE", b"spf=pass", b"spf=fail"),
    ],
)
def test_a_canned_message_that_ends_otherwise_stops_the_start(
    monkeypatch: pytest.MonkeyPatch, name: str, old: bytes, new: bytes
) -> None:
    monkeypatch.setattr(rescuewarmup, name, getattr(rescuewarmup, name).replace(old, new, 1))
    with pytest.raises(RuntimeError, match="rescue warm-up: expected"):
        rescuewarmup.exercise(orgdomain.PublicSuffixes(problem="none"))
