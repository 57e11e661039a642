"""Organizational domains and alignment: the list's algorithm on a small list
of its own, and known cases on Debian's copy of the Public Suffix List."""

from __future__ import annotations

from pathlib import Path

import pytest

from spfmilter.config import orgdomain

DEBIAN_LIST = Path("/usr/share/publicsuffix/public_suffix_list.dat")

SMALL_LIST = """\
// ===BEGIN ICANN DOMAINS===
com
uk
co.uk
ck
*.ck
!www.ck
jp
*.kawasaki.jp
!city.kawasaki.jp
公司.cn
cn
// ===END ICANN DOMAINS===
// ===BEGIN PRIVATE DOMAINS===
github.io
blogspot.com   trailing words are ignored
// ===END PRIVATE DOMAINS===
"""


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> orgdomain.PublicSuffixes:
    path = tmp_path_factory.mktemp("psl") / "list.dat"
    path.write_text(SMALL_LIST, encoding="utf-8")
    return orgdomain.load(path)


@pytest.fixture(scope="module")
def debian() -> orgdomain.PublicSuffixes:
    suffixes = orgdomain.load(DEBIAN_LIST)
    assert suffixes.loaded, suffixes.problem
    return suffixes


CASES = [
    ("example.com", "example.com"),
    ("mail.example.com", "example.com"),
    ("a.b.example.com.", "example.com"),
    ("EXAMPLE.Com", "example.com"),
    ("com", None),
    ("co.uk", None),
    ("example.co.uk", "example.co.uk"),
    ("mail.example.co.uk", "example.co.uk"),
    # The implicit "*" rule: an unlisted top-level domain.
    ("mail.example.invalidtld", "example.invalidtld"),
    # *.ck with the exception !www.ck.
    ("ck", None),
    ("test.ck", None),
    ("b.test.ck", "b.test.ck"),
    ("a.b.test.ck", "b.test.ck"),
    ("www.ck", "www.ck"),
    ("www.www.ck", "www.ck"),
    # "*.kawasaki.jp" does not make kawasaki.jp itself a suffix.
    ("kawasaki.jp", "kawasaki.jp"),
    ("test.kawasaki.jp", None),
    ("b.test.kawasaki.jp", "b.test.kawasaki.jp"),
    ("city.kawasaki.jp", "city.kawasaki.jp"),
    ("www.city.kawasaki.jp", "city.kawasaki.jp"),
    # The private section counts.
    ("github.io", None),
    ("alice.github.io", "alice.github.io"),
    ("www.alice.github.io", "alice.github.io"),
    ("blogspot.com", None),
    ("x.blogspot.com", "x.blogspot.com"),
    # IDNA: U-labels in the list and in names; the answer in A-labels.
    ("食狮.公司.cn", "xn--85x722f.xn--55qx5d.cn"),
    ("www.xn--85x722f.xn--55qx5d.cn", "xn--85x722f.xn--55qx5d.cn"),
    ("公司.cn", None),
    # Not domain names.
    ("", None),
    ("a..example.com", None),
]


@pytest.mark.parametrize(("domain", "expected"), CASES)
def test_small_list(small: orgdomain.PublicSuffixes, domain: str, expected: str | None) -> None:
    assert small.organizational_domain(domain) == expected


@pytest.mark.parametrize(("domain", "expected"), CASES)
def test_debian_list(debian: orgdomain.PublicSuffixes, domain: str, expected: str | None) -> None:
    assert debian.organizational_domain(domain) == expected


@pytest.mark.parametrize(
    ("first", "second", "aligned"),
    [
        ("example.com", "example.com", True),
        ("mail.example.com", "example.com", True),
        ("a.example.com", "b.example.com.", True),
        ("example.com", "example.net", False),
        ("evilexample.com", "example.com", False),
        ("example.co.uk", "other.co.uk", False),
        ("alice.github.io", "bob.github.io", False),
        ("co.uk", "co.uk", True),
        ("x.co.uk", "co.uk", False),
        ("bücher.example.com", "xn--bcher-kva.example.com", True),
        ("", "", False),
    ],
)
def test_aligned(debian: orgdomain.PublicSuffixes, first: str, second: str, aligned: bool) -> None:
    assert debian.aligned(first, second) is aligned
    assert debian.aligned(second, first) is aligned


def test_a_missing_list_means_exact_match(tmp_path: Path) -> None:
    suffixes = orgdomain.load(tmp_path / "absent.dat")
    assert not suffixes.loaded
    assert suffixes.problem is not None and "absent.dat" in suffixes.problem
    assert suffixes.aligned("Example.COM.", "example.com")
    assert not suffixes.aligned("mail.example.com", "example.com")


def test_a_list_without_rules_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "empty.dat"
    path.write_text("// nothing\n")
    suffixes = orgdomain.load(path)
    assert not suffixes.loaded
    assert not suffixes.aligned("mail.example.com", "example.com")
