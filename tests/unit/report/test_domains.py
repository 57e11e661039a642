"""Sender domains, their organizations, and names fit for a config line."""

from __future__ import annotations

import pytest

from spfmilter.report.domains import host_name, organization, sender_domain


@pytest.mark.parametrize(
    ("sender", "domain"),
    [
        ("alice@Example.ORG", "example.org"),
        ("alice@example.org.", "example.org"),
        ('"a@b"@example.org', "example.org"),
        ("no-domain", "no-domain"),
        ("", ""),
    ],
)
def test_sender_domain(sender: str, domain: str) -> None:
    assert sender_domain(sender) == domain


@pytest.mark.parametrize(
    ("domain", "org"),
    [
        ("example.org", "example.org"),
        ("mail.bounce.example.org", "example.org"),
        ("news.example.co.uk", "example.co.uk"),
        ("example.co.uk", "example.co.uk"),
        ("shop.example.com.au", "example.com.au"),
        # A second-level label under a generic top-level domain is a name.
        ("a.co.example", "co.example"),
        ("localhost", "localhost"),
        ("", ""),
    ],
)
def test_organization(domain: str, org: str) -> None:
    assert organization(domain) == org


@pytest.mark.parametrize(
    ("name", "fit"),
    [
        ("mx1.forwarder.example", True),
        ("MX1.Forwarder.Example", True),
        ("localhost", False),
        ("-bad.example", False),
        ("a..example", False),
        ("x.example\n[policy]", False),
        ("unknown", False),
        ("[203.0.113.7]", False),
        ("a" * 64 + ".example", False),
        ("under_score.example", True),
    ],
)
def test_host_name(name: str, fit: bool) -> None:
    assert host_name(name) is fit
