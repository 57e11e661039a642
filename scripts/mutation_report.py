"""Per-module scores of the last mutation run (scripts/mutation.sh runs it).

Reads mutmut's results under mutants/ and the reviewed list of equivalent
mutants (scripts/mutation-equivalents.toml), and prints for each module:
mutants in all, killed, timed out (a mutant that hangs the tests is
detected too), survived, not covered by any test, and the score over the
non-equivalent ones, (killed + timeout) / (all - equivalent).  Then the
survivors that are not listed as equivalent: the gaps in the tests.

An equivalent mutant is listed by name together with its mutated line, so
that an entry whose mutant was renumbered by an edit of the module is found
again by its line (within the same function), and an entry that matches
nothing any more is reported as stale rather than silently counted.

Usage: .venv/bin/python scripts/mutation_report.py [--min SCORE]
Exits 1 when a module scores below --min (default 90) or an entry is stale.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from collections import Counter
from pathlib import Path

from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENTS = ROOT / "scripts" / "mutation-equivalents.toml"
DETECTED = ("killed", "timeout", "caught by type check")
# Statuses with a column of their own; "other" counts the rest (not checked,
# suspicious, segfault, ...), which are not detected.
SHOWN = (*DETECTED, "survived", "no tests")


def mutated_line(name: str, source: Path) -> str:
    """The mutant's changed line(s), as `mutmut show` prints them after '+'."""
    diff = get_diff_for_mutant(name, path=source)
    plus = [line[1:].strip() for line in diff.splitlines()[2:] if line.startswith("+")]
    return " ".join(plus)


def function_of(name: str) -> str:
    return name.rpartition("__mutmut_")[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min", type=float, default=90.0, help="lowest acceptable score, %%")
    args = parser.parse_args(argv)

    equivalents: dict[str, dict[str, str]] = {
        entry["mutant"]: entry
        for entry in tomllib.loads(EQUIVALENTS.read_text()).get("equivalent", [])
        if isinstance(entry, dict)
    }
    metas = sorted((ROOT / "mutants" / "spfmilter").rglob("*.py.meta"))
    if not metas:
        print("no results under mutants/: run scripts/mutation.sh first", file=sys.stderr)
        return 2

    rows = []
    gaps: list[str] = []
    matched: set[str] = set()
    for meta in metas:
        # spfmilter/core/policy.py, whose mutants are named spfmilter.core.policy.*
        source = meta.relative_to(ROOT / "mutants").with_suffix("")
        module = ".".join(source.with_suffix("").parts)
        codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
        status = {name: status_by_exit_code[code] for name, code in codes.items()}
        lines = {
            name: mutated_line(name, source) for name, st in status.items() if st not in DETECTED
        }
        # An entry names its mutant; if that one now has another line (the
        # module was edited), the mutant of the same function with the line.
        equivalent: set[str] = set()
        for key, entry in equivalents.items():
            if not key.startswith(f"{module}."):
                continue
            candidates = [key] + [
                n for n in lines if function_of(n) == function_of(key) and n != key
            ]
            for name in candidates:
                if name in lines and name not in equivalent and lines[name] == entry["line"]:
                    equivalent.add(name)
                    matched.add(key)
                    break
        counts = Counter(status.values())
        detected = sum(counts[s] for s in DETECTED)
        scored = len(status) - len(equivalent)
        score = 100.0 * detected / scored if scored else 100.0
        rows.append(
            (module.removeprefix("spfmilter."), len(status), counts, len(equivalent), score)
        )
        for name in sorted(lines, key=lambda n: (function_of(n), int(n.rpartition("_")[2]))):
            if name not in equivalent:
                gaps.append(f"  {name} [{status[name]}]: {lines[name]}")

    header = f"{'module':<24}{'mutants':>8}{'killed':>8}{'timeout':>8}{'survived':>9}"
    header += f"{'no tests':>9}{'other':>7}{'equiv.':>8}{'score':>8}"
    print(header)
    worst = 100.0
    for module, total, counts, equivalent_count, score in rows:
        worst = min(worst, score)
        print(
            f"{module:<24}{total:>8}{counts['killed'] + counts['caught by type check']:>8}"
            f"{counts['timeout']:>8}{counts['survived']:>9}{counts['no tests']:>9}"
            f"{total - sum(counts[s] for s in SHOWN):>7}{equivalent_count:>8}{score:>7.1f}%"
        )
    print("score = (killed + timeout) / (mutants - equivalent); other: not checked, ...")
    if gaps:
        print(f"\nsurvivors not listed as equivalent ({len(gaps)}):")
        print("\n".join(gaps))
    stale = sorted(set(equivalents) - matched)
    if stale:
        print(f"\nstale entries in {EQUIVALENTS.name} (no surviving mutant has their line):")
        print("\n".join(f"  {name}: {equivalents[name]['line']}" for name in stale))
    return 1 if worst < args.min or stale else 0


if __name__ == "__main__":
    sys.exit(main())
