"""The direction of imports: parsed from the source, not assumed.

LAYERS says which package may import which; ALLOWED says it module by
module.  This file is the one statement of both: module docstrings and
prose elsewhere do not repeat it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "spfmilter"

# package -> the packages it may import ("" is the package's root modules).
LAYERS: dict[str, set[str]] = {
    "": {"config", "core", "evaluation", "mta", "process", "report"},
    "process": {"config", "core", "evaluation", "mta"},
    "mta": {"config", "core"},
    "evaluation": {"config", "core"},
    "core": {"config"},
    "config": set(),
    # The report reads logs: the log format is its contract, not the daemon's
    # code; of the rest only the vocabulary of [policy] mailfrom_reject.
    "report": {"config"},
}
# What every layer may import: the version and the vocabulary.
SHARED = {"__init__", "core.model", "printable"}

# module -> the spfmilter modules it may import
ALLOWED: dict[str, set[str]] = {
    "__init__": set(),
    "__main__": {"cli"},
    "printable": set(),
    "cli": {
        "__init__",
        "config.docs",
        "config.loading",
        "config.values",
        "core.metrics",
        "core.session",
        "evaluation.evaluator",
        "mta.check",
        "process.daemon",
        "process.logs",
        "report.command",
    },
    "config.__init__": set(),
    "config.docs": {"config.schema"},
    "config.loading": {"config.orgdomain", "config.schema", "core.model"},
    "config.orgdomain": set(),
    "config.schema": {"config.orgdomain", "config.values", "core.model"},
    "config.values": {"core.model"},
    "core.__init__": set(),
    "core.headers": {"core.model"},
    "core.metrics": {"__init__", "core.model"},
    "core.model": set(),
    "core.policy": {"config.schema", "core.headers", "core.model"},
    "core.session": {
        "config.schema",
        "core.headers",
        "core.metrics",
        "core.model",
        "core.policy",
        "core.verdicts",
    },
    "core.verdicts": {"core.metrics", "core.model"},
    "evaluation.__init__": set(),
    "evaluation.arcresults": {"config.orgdomain", "core.headers"},
    "evaluation.dkimkeys": set(),
    "evaluation.clientfacts": {"core.model", "evaluation.resolver"},
    "evaluation.cpubudget": set(),
    "evaluation.dnswire": set(),
    "evaluation.evaluator": {
        "config.orgdomain",
        "config.schema",
        "core.metrics",
        "core.model",
        "evaluation.clientfacts",
        "evaluation.pool",
        "evaluation.prefetch",
        "evaluation.pyspf",
        "evaluation.rescue",
        "evaluation.rescuetext",
        "evaluation.resolver",
    },
    "evaluation.pool": set(),
    "evaluation.prefetch": set(),
    "evaluation.pyspf": {
        "core.metrics",
        "core.model",
        "evaluation.cpubudget",
        "evaluation.prefetch",
        "evaluation.resolver",
        "evaluation.results",
    },
    "evaluation.resolver": {
        "config.schema",
        "core.metrics",
        "evaluation.dnswire",
        "evaluation.ttlcache",
    },
    "evaluation.rescue": {
        "config.orgdomain",
        "core.model",
        "evaluation.arcresults",
        "evaluation.dkimkeys",
    },
    "evaluation.rescuetext": {"core.headers", "core.model", "evaluation.rescue"},
    "evaluation.rescuewarmup": {
        "config.orgdomain",
        "evaluation.rescue",
        "evaluation.rescuetext",
    },
    "evaluation.results": {"core.metrics", "core.model", "evaluation.ttlcache"},
    "evaluation.ttlcache": set(),
    "evaluation.warmup": {
        "core.model",
        "evaluation.dnswire",
        "evaluation.pyspf",
        "evaluation.resolver",
    },
    "mta.__init__": set(),
    "mta.check": {"config.schema", "core.model", "core.session"},
    "mta.libmilter": {"config.schema", "core.headers", "core.model", "core.session"},
    "process.__init__": set(),
    "process.activation": set(),
    "process.daemon": {
        "config.loading",
        "config.orgdomain",
        "config.schema",
        "core.metrics",
        "core.session",
        "evaluation.evaluator",
        "evaluation.rescuewarmup",
        "evaluation.warmup",
        "mta.libmilter",
        "process.activation",
        "process.exporter",
        "process.logs",
        "process.milterloop",
        "process.privileges",
        "process.workers",
    },
    "process.exporter": {"core.metrics"},
    "process.milterloop": {"mta.libmilter", "process.workers"},
    "process.logs": {"config.schema", "printable"},
    "process.privileges": {"config.loading", "config.schema"},
    "process.workers": set(),
    "report.__init__": {"report.command"},
    "report.command": {
        "config.values",
        "printable",
        "report.inputs",
        "report.page",
        "report.progress",
        "report.scan",
        "report.summary",
        "report.table",
        "report.tally",
    },
    "report.domains": set(),
    "report.export": set(),
    "report.inputs": {"report.export"},
    "report.page": {"report.summary"},
    "report.progress": {"printable"},
    "report.records": set(),
    "report.scan": {"report.inputs", "report.progress", "report.tally"},
    "report.summary": set(),
    "report.table": {"report.summary"},
    "report.tally": {
        "printable",
        "report.domains",
        "report.records",
        "report.summary",
        "report.topk",
    },
    "report.topk": set(),
}
# dnspython is not used: spfmilter.evaluation.dnswire speaks DNS itself.
THIRD_PARTY = {
    "Milter": {"mta.libmilter"},
    "spf": {"evaluation.pyspf"},
    "dkim": {"evaluation.dkimkeys", "evaluation.rescue"},
    "dns": set(),
}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


MODULES = sorted(module_name(p) for p in PACKAGE.rglob("*.py"))


def imports(module: str) -> set[str]:
    """The modules `module` imports, spfmilter's named relative to it."""
    path = PACKAGE.joinpath(*module.split(".")).with_suffix(".py")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            # "from spfmilter.core import policy" imports spfmilter.core.policy.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def ours(names: set[str]) -> set[str]:
    """spfmilter's modules among `names` ("from spfmilter import
    __version__" is an import of the package itself)."""
    found = set()
    for name in names:
        if name.startswith("spfmilter."):
            relative = name.removeprefix("spfmilter.")
            if relative in ALLOWED:
                found.add(relative)
            elif relative + ".__init__" not in ALLOWED and "." not in relative:
                found.add("__init__")
    return found


def layer(module: str) -> str:
    package, _, _ = module.rpartition(".")
    return package


def test_every_module_is_listed() -> None:
    assert set(MODULES) == set(ALLOWED)


def test_every_package_is_a_layer() -> None:
    assert {layer(module) for module in MODULES} == set(LAYERS)


def test_the_layers_stack_without_a_cycle() -> None:
    below: dict[str, set[str]] = {}
    for _ in LAYERS:  # enough rounds to follow any path
        below = {
            name: LAYERS[name]
            | {deeper for under in LAYERS[name] for deeper in below.get(under, ())}
            for name in LAYERS
        }
    assert all(name not in below[name] for name in LAYERS), below


@pytest.mark.parametrize("module", MODULES)
def test_imports_point_down(module: str) -> None:
    names = imports(module)
    found = ours(names)
    assert found <= ALLOWED[module], f"{module} imports {found - ALLOWED[module]}"
    for library, users in THIRD_PARTY.items():
        uses = any(n == library or n.startswith(library + ".") for n in names)
        if uses:
            assert module in users, f"{module} must not import {library}"


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_the_modules_table_keeps_to_the_layers(module: str) -> None:
    for imported in ALLOWED[module]:
        here, there = layer(module), layer(imported)
        allowed = there == here or there in LAYERS[here] or imported in SHARED
        assert allowed, f"{module} -> {imported}"


def test_policy_and_headers_do_no_io() -> None:
    for module in ("core.policy", "core.headers", "core.model", "config.values", "config.schema"):
        names = imports(module)
        assert not names & {"socket", "os", "subprocess", "Milter", "spf", "logging"}, module
