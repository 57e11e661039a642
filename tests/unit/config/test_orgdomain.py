"""Organizational domains and alignment: the list's algorithm on a small list
of its own, and known cases on Debian's copy of the Public Suffix List."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spfmilter.config import orgdomain

ROOT = Path(__file__).resolve().parents[3]
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


@pytest.fixture
def small(tmp_path: Path) -> orgdomain.PublicSuffixes:
    # Loaded for each test (it is small): every case then reads the list
    # through load(), and mutation testing sees which cases depend on it.
    path = tmp_path / "list.dat"
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
    # Upper case is lowered after the root dot is taken off.
    ("MAIL.EXAMPLE.BOX.", "example.box"),
    # Not domain names.
    ("", None),
    ("a..example.com", None),
    # A U-label IDNA cannot encode (longer than 63 octets as an A-label).
    ("b\u00fc" * 40 + ".example", None),
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


def test_the_list_is_read_as_utf_8_whatever_the_locale(tmp_path: Path) -> None:
    # Python takes the locale's encoding by default: ASCII in the C locale
    # when neither locale coercion nor UTF-8 mode applies (PEP 538, 540).
    # The list is UTF-8 (its IDN rules), and so is reading it.
    path = tmp_path / "list.dat"
    path.write_text(SMALL_LIST, encoding="utf-8")
    assert orgdomain.load(path).organizational_domain("食狮.公司.cn") == "xn--85x722f.xn--55qx5d.cn"
    child = (
        "import sys\n"
        "from spfmilter.config import orgdomain\n"
        "suffixes = orgdomain.load(sys.argv[1])\n"
        "print(suffixes.problem or suffixes.organizational_domain('a.b.xn--55qx5d.cn'))\n"
    )
    environment = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    done = subprocess.run(
        [sys.executable, "-c", child, str(path)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert done.stdout == "b.xn--55qx5d.cn\n"


def test_a_label_idna_cannot_encode_is_no_domain_name() -> None:
    assert orgdomain.normalise("b\u00fc" * 40 + ".example") == ""
    assert orgdomain.normalise("B\u00dcCHER.Example.") == "xn--bcher-kva.example"
