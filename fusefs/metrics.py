"""Prometheus metrics, opt-in (``[metrics] address = "127.0.0.1:9464"``, docs/operations.md).

Two kinds of figure. Events the providers see (requests, retries, rate-limit waits, bytes,
token refreshes) and FUSE read latency are recorded as they happen, through the module-level
functions below: each is a no-op while no :class:`Metrics` is installed, so a mount without
metrics pays one global lookup. Figures the cache already counts (hits, misses, evictions,
sizes) are read from it when Prometheus scrapes (:meth:`Metrics.watch_cache`), never copied on
the hot path.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# FUSE reads: page-cache misses that the block cache answers in ~0.1 ms, to cloud fetches
READ_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)


# the cache's figures, by name in its statistics: what kind of metric each is, and its help
_CACHE_FIGURES: tuple[tuple[str, type[CounterMetricFamily | GaugeMetricFamily], str], ...] = (
    ("hits", CounterMetricFamily, "Reads answered from the cache (memory or disk)"),
    ("misses", CounterMetricFamily, "Reads that had to wait for a download"),
    ("evicted_blocks", CounterMetricFamily, "Blocks evicted to stay under the cache cap"),
    ("fetched_bytes", CounterMetricFamily, "Bytes received into the cache"),
    ("unpinned_bytes", GaugeMetricFamily, "Evictable bytes in the cache"),
    ("pinned_bytes", GaugeMetricFamily, "Pinned and one-shot bytes in the cache (never evicted)"),
    ("max_bytes", GaugeMetricFamily, "The cache cap for evictable bytes"),
)


class _CacheCollector(Collector):
    """Reads the cache's counters at scrape time (``source()`` → the numbers by name)."""

    def __init__(self, source: Callable[[], Mapping[str, int]]) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        try:
            s = self.source()
        except Exception:  # a scrape never takes the mount down
            log.exception("metrics: reading the cache counters failed")
            return
        for key, family, text in _CACHE_FIGURES:
            if key in s:
                metric = family(f"fusefs_cache_{key}", text)
                metric.add_metric([], s[key])
                yield metric


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "fusefs_requests",
            "Remote requests, by provider, call and HTTP status (or connect/timeout/reset/bad_url"
            " when no answer came)",
            ["provider", "call", "status"],
            registry=r,
        )
        self.retries = Counter(
            "fusefs_retries",
            "Remote requests tried again (backoff, resume, fresh token or link)",
            ["provider", "call"],
            registry=r,
        )
        self.rate_limit_wait = Counter(
            "fusefs_rate_limit_wait_seconds",
            "Time spent waiting for a provider's rate limit (throttle backoffs, IoTDA download"
            " turns), summed over the waiters",
            ["provider"],
            registry=r,
        )
        self.downloaded = Counter(
            "fusefs_downloaded_bytes",
            "File bytes received from the provider",
            ["provider"],
            registry=r,
        )
        self.token_refreshes = Counter(
            "fusefs_token_refreshes",
            "Access tokens fetched (the first one and each renewal)",
            ["provider"],
            registry=r,
        )
        self.read_latency = Histogram(
            "fusefs_read_seconds",
            "FUSE read calls, time to answer",
            buckets=READ_BUCKETS,
            registry=r,
        )
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def watch_cache(self, source: Callable[[], Mapping[str, int]]) -> None:
        self.registry.register(_CacheCollector(source))

    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Serve ``/metrics`` from a daemon thread; returns the bound address (port 0: any)."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        bound = self._server.server_address
        return str(bound[0]), int(bound[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


_current: Metrics | None = None


def install(metrics: Metrics | None) -> None:
    """Make ``metrics`` the recorder for this process (None: stop recording)."""
    global _current
    _current = metrics


def request(provider: str, call: str, status: int | str) -> None:
    m = _current
    if m is not None:
        m.requests.labels(provider, call, str(status)).inc()


def retry(provider: str, call: str) -> None:
    m = _current
    if m is not None:
        m.retries.labels(provider, call).inc()


def rate_limit_wait(provider: str, seconds: float) -> None:
    m = _current
    if m is not None and seconds > 0:
        m.rate_limit_wait.labels(provider).inc(seconds)


def downloaded(provider: str, nbytes: int) -> None:
    m = _current
    if m is not None and nbytes > 0:
        m.downloaded.labels(provider).inc(nbytes)


def token_refresh(provider: str) -> None:
    m = _current
    if m is not None:
        m.token_refreshes.labels(provider).inc()


def read_latency(seconds: float) -> None:
    m = _current
    if m is not None:
        m.read_latency.observe(seconds)
