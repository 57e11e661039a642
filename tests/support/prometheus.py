"""Prometheus's own readers of a metrics exposition, run for tests.

This module owns reading /metrics the way Prometheus does: scraping a port
over HTTP with or without OpenMetrics in the Accept header (Prometheus 2
lists it first), checking the text with Debian's ``promtool check metrics``
(Prometheus's own parser and linter), parsing it with prometheus-client's
text-format or OpenMetrics parser as the Content-Type says, and the
invariants every scrape must keep whichever parser read it: each histogram's
buckets cumulative and its +Inf bucket equal to its _count.  Like the other
consumers it must not import spfmilter: it only reads what spfmilter wrote.
"""

from __future__ import annotations

import subprocess
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import parser
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import parser as openmetrics_parser

from tests.support.consumers import require

PROMTOOL = Path("/usr/bin/promtool")
# The Accept header of Prometheus 2's scrapes.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)

# spfmilter's counter families, named as the exposition names them: without
# "_total" (prometheus-client's parsers take it off too).
COUNTERS = (
    "spfmilter_verdicts",
    "spfmilter_skips",
    "spfmilter_rescues",
    "spfmilter_dns_queries",
    "spfmilter_dns_cache_hits",
    "spfmilter_dns_cache_misses",
    "spfmilter_result_cache_hits",
    "spfmilter_result_cache_misses",
    "spfmilter_internal_errors",
    "spfmilter_config_reloads",
)


def family_types(*, openmetrics: bool) -> dict[str, str]:
    """Every family spfmilter exposes, with the type a parser must read.

    The text format 0.0.4 has no info type: the build is a gauge of 1 named
    *_info there, and an info family in OpenMetrics."""
    return {
        **dict.fromkeys(COUNTERS, "counter"),
        "spfmilter_dns_query_seconds": "histogram",
        "spfmilter_connections_in_flight": "gauge",
        **({"spfmilter_build": "info"} if openmetrics else {"spfmilter_build_info": "gauge"}),
    }


@dataclass(frozen=True)
class Scrape:
    """One answer of /metrics."""

    content_type: str
    text: str

    @property
    def openmetrics(self) -> bool:
        return self.content_type.startswith("application/openmetrics-text")

    def families(self) -> list[Metric]:
        """The metric families, read by the parser the Content-Type calls for."""
        return (openmetrics_families if self.openmetrics else text_families)(self.text)


def text_families(text: str) -> list[Metric]:
    """The families of text format 0.0.4, as prometheus-client parses it."""
    return list(parser.text_string_to_metric_families(text))


def openmetrics_families(text: str) -> list[Metric]:
    """The families of OpenMetrics text, as prometheus-client parses it
    (and checks it: each histogram's +Inf bucket against its _count, say)."""
    parse = openmetrics_parser.text_string_to_metric_families
    return list(parse(text))  # type: ignore[no-untyped-call]


def scrape(port: int, *, openmetrics: bool = False, timeout: float = 10) -> Scrape:
    """GET /metrics on 127.0.0.1:`port`, as Prometheus 2 asks when
    `openmetrics`, else as a plain HTTP client does."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if openmetrics:
        request.add_header("Accept", PROMETHEUS_ACCEPT)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return Scrape(response.headers["Content-Type"], response.read().decode())


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    """``promtool check metrics`` on text-format `text`: exit status 0 when
    it parses and passes the linter, with the problems on stdout/stderr."""
    require(PROMTOOL, "prometheus")
    return subprocess.run(
        [str(PROMTOOL), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def sample(families: Iterable[Metric], name: str, **labels: str) -> float:
    """The value of the sample `name` with exactly `labels`."""
    for family in families:
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    raise KeyError(f"no sample {name}{labels}")


def histogram_problems(families: Iterable[Metric]) -> list[str]:
    """What breaks a histogram's invariants, series by series: buckets that
    are not cumulative, a +Inf bucket missing or unequal to _count."""
    problems = []
    for family in families:
        if family.type != "histogram":
            continue
        series: dict[tuple[tuple[str, str], ...], dict[str, list[tuple[float, float]]]] = {}
        for found in family.samples:
            labels = {k: v for k, v in found.labels.items() if k != "le"}
            key = tuple(sorted(labels.items()))
            suffix = found.name.removeprefix(family.name)
            bound = float(found.labels.get("le", "nan"))
            series.setdefault(key, {}).setdefault(suffix, []).append((bound, found.value))
        for key, parts in series.items():
            buckets = sorted(parts.get("_bucket", []))
            counts = [value for _, value in buckets]
            where = f"{family.name}{dict(key)}"
            if counts != sorted(counts):
                problems.append(f"{where}: buckets not cumulative: {buckets}")
            if not buckets or buckets[-1][0] != float("inf"):
                problems.append(f"{where}: no +Inf bucket")
            elif [buckets[-1][1]] != (count := [value for _, value in parts.get("_count", [])]):
                problems.append(f"{where}: +Inf {buckets[-1][1]} != _count {count}")
    return problems
