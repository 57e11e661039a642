"""The direction of imports (STYLE.md): parsed from the source, not assumed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "spfmilter"

# module -> the spfmilter modules it may import
ALLOWED: dict[str, set[str]] = {
    "__init__": set(),
    "__main__": {"cli"},
    "model": set(),
    "values": {"model"},
    "schema": {"model", "values"},
    "config": {"model", "values", "schema"},
    "configdoc": {"config"},
    "headers": {"model"},
    "metrics": {"__init__", "model"},
    "scrape": {"metrics"},
    "logs": {"config", "values"},
    "dnswire": set(),
    "ttlcache": set(),
    "dns": {"schema", "model", "metrics", "dnswire", "ttlcache"},
    "checker": {"model", "dns", "metrics", "ttlcache"},
    "warmup": {"model", "dnswire", "dns", "checker"},
    "services": {"model", "config", "dns", "checker", "metrics"},
    "policy": {"model", "config", "schema", "headers"},
    "verdicts": {"model", "metrics"},
    "session": {"model", "config", "policy", "headers", "dns", "services", "verdicts"},
    "milter": {"model", "config", "headers", "services", "session"},
    "runas": {"config", "schema"},
    "check": {"model", "config", "services", "session"},
    "workers": set(),
    "activation": set(),
    "daemon": {
        "activation",
        "model",
        "config",
        "logs",
        "metrics",
        "milter",
        "runas",
        "scrape",
        "services",
        "values",
        "warmup",
        "workers",
    },
    "cli": {
        "__init__",
        "check",
        "config",
        "configdoc",
        "daemon",
        "logs",
        "metrics",
        "services",
        "values",
    },
}
# dnspython is not used: spfmilter.dnswire speaks DNS itself.
THIRD_PARTY = {"Milter": {"milter", "daemon"}, "spf": {"checker"}, "dns": set()}


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "spfmilter":
                found.update(f"spfmilter.{alias.name}" for alias in node.names)
            found.add(node.module)
    return found


MODULES = sorted(p.stem for p in PACKAGE.glob("*.py"))


def test_every_module_is_listed() -> None:
    assert set(MODULES) == set(ALLOWED)


@pytest.mark.parametrize("module", MODULES)
def test_imports_point_down(module: str) -> None:
    names = imports(PACKAGE / f"{module}.py")
    # "from spfmilter import __version__" is an import of the package itself.
    ours = {
        part if part in ALLOWED else "__init__"
        for part in (n.split(".")[1] for n in names if n.startswith("spfmilter."))
    }
    assert ours <= ALLOWED[module], f"{module} imports {ours - ALLOWED[module]}"
    for library, users in THIRD_PARTY.items():
        uses = any(n == library or n.startswith(library + ".") for n in names)
        if uses:
            assert module in users, f"{module} must not import {library}"


def test_policy_and_headers_do_no_io() -> None:
    for module in ("policy", "headers", "model", "values", "schema"):
        names = imports(PACKAGE / f"{module}.py")
        assert not names & {"socket", "os", "subprocess", "Milter", "spf", "logging"}, module
