"""The metrics endpoint: events recorded only while installed, cache figures read at scrape."""

from __future__ import annotations

import urllib.request

from fusefs import metrics


def scrape(address: tuple[str, int]) -> str:
    with urllib.request.urlopen(f"http://{address[0]}:{address[1]}/metrics", timeout=5) as r:
        body: bytes = r.read()
    return body.decode()


def test_events_and_cache_figures_reach_the_endpoint() -> None:
    metrics.request("koodrive", "list", 200)  # before install: not recorded anywhere
    m = metrics.Metrics()
    stats = {"hits": 3, "misses": 1, "unpinned_bytes": 4096, "max_bytes": 1 << 20}
    m.watch_cache(lambda: stats)
    metrics.install(m)
    try:
        address = m.serve("127.0.0.1", 0)
        metrics.request("koodrive", "list", 200)
        metrics.request("koodrive", "list", 200)
        metrics.request("iotda", "download", 429)
        metrics.retry("iotda", "download")
        metrics.downloaded("enos", 1000)
        metrics.downloaded("enos", 0)
        metrics.rate_limit_wait("iotda", 2.5)
        metrics.token_refresh("roma")
        metrics.read_latency(0.002)
        stats["hits"] = 5  # read at scrape time
        text = scrape(address)
    finally:
        metrics.install(None)
        m.close()
    for line in (
        'fusefs_requests_total{call="list",provider="koodrive",status="200"} 2.0',
        'fusefs_requests_total{call="download",provider="iotda",status="429"} 1.0',
        'fusefs_retries_total{call="download",provider="iotda"} 1.0',
        'fusefs_downloaded_bytes_total{provider="enos"} 1000.0',
        'fusefs_rate_limit_wait_seconds_total{provider="iotda"} 2.5',
        'fusefs_token_refreshes_total{provider="roma"} 1.0',
        "fusefs_read_seconds_count 1.0",
        'fusefs_read_seconds_bucket{le="0.005"} 1.0',
        "fusefs_cache_hits_total 5.0",
        "fusefs_cache_misses_total 1.0",
        "fusefs_cache_unpinned_bytes 4096.0",
    ):
        assert line in text.splitlines(), line


def test_a_failing_cache_source_does_not_break_the_scrape() -> None:
    m = metrics.Metrics()

    def broken() -> dict[str, int]:
        raise RuntimeError("gone")

    m.watch_cache(broken)
    try:
        address = m.serve("127.0.0.1", 0)
        text = scrape(address)
    finally:
        m.close()
    assert "fusefs_requests" in text and "fusefs_cache_hits" not in text
