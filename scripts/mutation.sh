#!/usr/bin/env bash
# Mutation testing of the unit suite (tests/unit) over every module of the
# core, SPF/DNS and configuration layers ([tool.mutmut] only_mutate lists
# them).  The configuration is [tool.mutmut] in pyproject.toml; mutmut
# works in mutants/ (a copy of the tree) and needs the fast suites to pass
# first.
#
#   bash scripts/mutation.sh            # a fresh run, then the per-module scores
#   bash scripts/mutation.sh --report   # the scores of the last run again
#   bash scripts/mutation.sh --min 95   # other options go to scripts/mutation_report.py
#
# The scores count a mutant as detected when the tests fail or hang on it,
# and leave out the reviewed equivalent mutants of
# scripts/mutation-equivalents.toml; every other survivor is listed.  The
# exit status is 1 when a module scores below 90% (report --min to change).
# A full run makes about 7,000 mutants and takes two hours or more on 2 cores
# (most modules go at about a mutant a second; the rescue's tests sign and
# verify, the metrics' fork and stress the store, and go slower).  mutmut
# keeps which tests reach which function between runs and collects it again
# only for new test names: after changing what an existing test does, delete
# mutants/mutmut-stats.json (a fresh run does).  `.venv/bin/mutmut run NAME...` reruns
# some mutants (names may hold * wildcards).  The property-based tests
# run with fewer examples here (SPFMILTER_PROPERTY_EXAMPLES, default 30):
# each mutant reruns every test that reaches the mutated function.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
python=.venv/bin/python

if ! "$python" -c 'import mutmut' 2>/dev/null; then
  .venv/bin/pip install --quiet 'mutmut>=3.8,<4'
fi

report_only=no
if [ "${1:-}" = "--report" ]; then
  report_only=yes
  shift
fi

if [ "$report_only" = no ]; then
  export SPFMILTER_PROPERTY_EXAMPLES="${SPFMILTER_PROPERTY_EXAMPLES:-30}"
  # A fresh copy each time: results cached from an older tree could be stale.
  rm -rf mutants
  mkdir mutants
  log=mutants/mutmut-run.log
  started=$SECONDS
  if ! .venv/bin/mutmut run >"$log" 2>&1; then
    tr '\r' '\n' <"$log" | tail -n 40 >&2
    exit 2
  fi
  echo "mutmut $("$python" -c 'import importlib.metadata as m; print(m.version("mutmut"))'):" \
    "$(tr '\r' '\n' <"$log" | grep -a '/' | tail -n 1 | sed 's/^[^0-9]*//')" \
    "in $((SECONDS - started)) s"
fi
exec "$python" scripts/mutation_report.py "$@"
