"""Prometheus metrics: one Metrics object per process, handed to its users.

This module owns the metric names, labels and buckets, and the optional
HTTP listener ([metrics] listen).  The object is made once in daemon.py and
passed to the milter, the resolver and the config holder through their
constructors: nothing here is a module-level registry.  It imports only
prometheus_client and the package version.
"""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import start_http_server

from spfmilter import __version__

# DNS answers on a LAN resolver take about a millisecond, a cold recursive
# lookup tens to hundreds, and a timeout seconds.
DNS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20)


class Metrics:
    """The process's metrics, in a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.verdicts = Counter(
            "spfmilter_verdicts",
            "Verdicts, by the identity that decided, its SPF result and the action",
            ["identity", "result", "action"],
            registry=r,
        )
        self.skips = Counter("spfmilter_skips", "Transactions SPF was not applied to", registry=r)
        self.dns_queries = Counter(
            "spfmilter_dns_queries",
            "DNS queries sent (cache misses), by type and outcome",
            ["qtype", "outcome"],
            registry=r,
        )
        self.dns_seconds = Histogram(
            "spfmilter_dns_query_seconds",
            "Time of DNS queries sent",
            ["qtype"],
            buckets=DNS_BUCKETS,
            registry=r,
        )
        self.cache_hits = Counter(
            "spfmilter_dns_cache_hits", "Lookups answered by the shared cache", registry=r
        )
        self.cache_misses = Counter(
            "spfmilter_dns_cache_misses", "Lookups the shared cache could not answer", registry=r
        )
        self.connections = Gauge(
            "spfmilter_connections_in_flight", "SMTP connections being served", registry=r
        )
        self.errors = Counter(
            "spfmilter_internal_errors",
            "Callbacks that failed unexpectedly and were tempfailed",
            registry=r,
        )
        self.reloads = Counter(
            "spfmilter_config_reloads", "Configuration reloads, by outcome", ["outcome"], registry=r
        )
        Info("spfmilter_build", "Version of spfmilter", registry=r).info({"version": __version__})

    def serve(self, host: str, port: int) -> WSGIServer:
        """Start the /metrics HTTP listener in a daemon thread."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
