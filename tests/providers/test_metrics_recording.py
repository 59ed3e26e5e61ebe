"""The providers' metrics, scraped over HTTP and compared with what the emulator (a real process,
over HTTP) counted: requests by route and status, retries, rate-limit waits, token refreshes,
and the bytes downloaded (both download paths: httpx streams and the worker-thread bodies)."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fusefs import metrics
from fusefs.providers._bulk import BulkClient
from fusefs.providers._http import RetryPolicy, Target, download_range, meter
from fusefs.providers.base import Provider, RemoteEntry, TransientError, Unavailable
from fusefs.providers.koodrive import ContainerSpec, KoodriveProvider
from fusefs.providers.registry import build_providers, load_config
from fusefs.testbed import demo_config
from tests.helpers.mounting import FAST_IOTDA_WINDOW, Emulator
from tests.providers.conftest import read_all, ref_of, walk

FAST = RetryPolicy(attempts=6, base_delay=0.001, max_delay=0.01, unavailable_attempts=2)
#: IoTDA's window here: a little longer than the emulator's, so that it never says "too frequent"
WINDOW = FAST_IOTDA_WINDOW + 0.1

#: (provider, call) as the metrics label them → the emulator's route
ROUTE = {
    ("enos", "token.get"): "enos.token.get",
    ("enos", "token.refresh"): "enos.token.refresh",
    ("enos", "searchAsset"): "enos.asset.search",
    ("enos", "searchDevice"): "enos.device.search",
    ("enos", "getAsset"): "enos.asset.get",
    ("enos", "getDevice"): "enos.device.get",
    ("enos", "getThingModel"): "enos.model.get",
    ("enos", "queryLatest"): "enos.measurepoint.latest",
    ("enos", "getFileInfo"): "enos.file.info",
    ("enos", "searchFirmware"): "enos.firmware.search",
    ("enos", "downloadFile"): "enos.download",
    ("enos", "downloadFirmwareFile"): "enos.firmware.download",
    ("koodrive", "listFiles"): "koodrive.list",
    ("koodrive", "download"): "koodrive.download_links",
    ("koodrive", "obsGet"): "koodrive.obs",
    ("iam", "token"): "iam.token",
    ("iotda", "listExportTasks"): "iotda.list",
    ("iotda", "downloadExportFile"): "iotda.download",
    ("roma", "jobStatus"): "roma.job",
    ("roma", "downloadArchive"): "roma.download",
    ("roma", "export"): "roma.export",
}

Samples = dict[str, dict[tuple[str, ...], float]]


def scrape(address: tuple[str, int]) -> Samples:
    """``name → {label values (sorted by label name): value}`` from ``/metrics``."""
    with urllib.request.urlopen(f"http://{address[0]}:{address[1]}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = tuple(v for _, v in sorted(s.labels.items()))
            out.setdefault(s.name, {})[key] = s.value
    return out


def by_route(samples: Samples) -> dict[tuple[str, str], int]:
    """``fusefs_requests_total`` as ``(emulator route, status) → n``."""
    out: dict[tuple[str, str], int] = {}
    for (call, provider, status), n in samples.get("fusefs_requests_total", {}).items():
        route = ROUTE[(provider, call)]
        out[(route, status)] = out.get((route, status), 0) + int(n)
    return out


def emulator_statuses(emulator: Emulator) -> dict[tuple[str, str], int]:
    raw = emulator.admin("GET", "/_admin/stats")
    return {
        (route, status): int(n)
        for route, statuses in raw["statuses"].items()
        for status, n in statuses.items()
    }


class Sink:
    """A RangeSink collecting the bytes (256 KiB buffers: several receives per fetch)."""

    def __init__(self, start: int) -> None:
        self.start = start
        self.out = bytearray()
        self._buf = bytearray(256 << 10)

    def buffer(self, pos: int) -> memoryview:
        assert pos == self.start + len(self.out), (pos, self.start, len(self.out))
        return memoryview(self._buf)

    def received(self, pos: int, n: int) -> None:
        self.out += self._buf[:n]


@pytest.fixture
def recording() -> Iterator[tuple[str, int]]:
    """A Metrics installed for the test; yields the address of its endpoint."""
    m = metrics.Metrics()
    metrics.install(m)
    try:
        yield m.serve("127.0.0.1", 0)
    finally:
        metrics.install(None)
        m.close()


@pytest.fixture
async def providers(
    emulator: Emulator, world_tiny: Path, tmp_path: Path
) -> AsyncIterator[dict[str, Provider]]:
    cfg_path = tmp_path / "config.toml"
    env = demo_config(
        world_tiny,
        emulator.url,
        tmp_path / "cache",
        cfg_path,
        iotda={"download_interval": WINDOW, "background_fetch": False},
    )
    cfg = load_config(cfg_path, env)
    bulk = BulkClient()
    async with httpx.AsyncClient(timeout=30) as client:
        built = build_providers(cfg, client, clock=time.time, retry_policy=FAST, bulk=bulk)
        try:
            yield {p.name: p for p in built}
        finally:
            bulk.close()


async def files(p: Provider) -> list[RemoteEntry]:
    return [e for _, e in await walk(p)]


async def test_enos_and_koodrive_figures_match_the_emulator(
    emulator: Emulator,
    providers: dict[str, Provider],
    recording: tuple[str, int],
) -> None:
    address = recording
    emulator.reset_stats()
    emulator.set_faults(
        {
            "rules": [
                {"route": "koodrive.list", "kind": "error", "status": 503, "count": 1},
                {"route": "enos.asset.search", "kind": "throttle", "retry_after": 1, "count": 1},
                # the worker-thread path: a 503, then a cut after the answer (no new request)
                {"route": "koodrive.obs", "kind": "error", "status": 503, "count": 1},
                {"route": "koodrive.obs", "kind": "reset", "after_bytes": 500, "count": 1},
                # an expired token on the httpx stream path: a fresh token, the same byte
                {"route": "enos.download", "kind": "error", "status": 401, "count": 1},
            ]
        }
    )
    kd, enos = providers["koodrive"], providers["enos"]
    assert isinstance(kd, KoodriveProvider)
    read = {"koodrive": 0, "enos": 0}
    for e in (await files(kd))[:10]:
        assert e.size is not None
        sink = Sink(0)
        await kd.fetch_range(ref_of(kd, e), 0, e.size, sink)
        assert len(sink.out) == e.size
        read["koodrive"] += e.size
    for e in await files(enos):
        read["enos"] += len(await read_all(enos, e))
    assert read["koodrive"] and read["enos"]

    s = scrape(address)
    assert by_route(s) == emulator_statuses(emulator)
    assert s["fusefs_downloaded_bytes_total"] == {
        ("enos",): read["enos"],
        ("koodrive",): read["koodrive"],
    }
    assert s["fusefs_retries_total"] == {
        ("listFiles", "koodrive"): 1,  # the 503
        ("obsGet", "koodrive"): 2,  # the 503 and the cut
        ("searchAsset", "enos"): 1,  # the 429
        ("downloadFile", "enos"): 1,  # the 401: a fresh token
    }
    # the 429 said Retry-After: 1; nothing else waited for a rate limit
    assert set(s["fusefs_rate_limit_wait_seconds_total"]) == {("enos",)}
    assert 1.0 <= s["fusefs_rate_limit_wait_seconds_total"][("enos",)] < 2.0
    tokens = emulator_statuses(emulator)[("enos.token.get", "200")]
    assert tokens == 2
    assert s["fusefs_token_refreshes_total"] == {("enos",): tokens}


async def test_iotda_and_roma_figures_match_the_emulator(
    emulator: Emulator,
    providers: dict[str, Provider],
    recording: tuple[str, int],
) -> None:
    address = recording
    emulator.reset_stats()
    emulator.set_faults(
        {
            "rules": [
                # IoTDA throttles with 403 IOTDA.021101: a retry after a rate-limit wait
                {"route": "iotda.list", "kind": "throttle", "count": 1},
                # the IAM token rejected by ROMA's gateway: a fresh one, one more try
                {"route": "roma.job", "kind": "error", "status": 401, "count": 1},
            ]
        }
    )
    iotda, roma = providers["iotda"], providers["roma"]
    read = {"iotda": 0, "roma": 0}
    exports = await files(iotda)
    assert len(exports) >= 2
    started = time.monotonic()
    read["iotda"] += len(await read_all(iotda, exports[0]))
    first = time.monotonic() - started
    read["iotda"] += len(await read_all(iotda, exports[1]))  # waits for its turn
    archive = (await files(roma))[0]
    read["roma"] += len(await read_all(roma, archive))

    s = scrape(address)
    assert by_route(s) == emulator_statuses(emulator)
    assert s["fusefs_downloaded_bytes_total"] == {
        ("iotda",): read["iotda"],
        ("roma",): read["roma"],
    }
    assert s["fusefs_retries_total"] == {
        ("listExportTasks", "iotda"): 1,
        ("jobStatus", "roma"): 1,
    }
    waits = s["fusefs_rate_limit_wait_seconds_total"]
    assert set(waits) == {("iotda",)}
    # the second download's turn: the window less the first download's time
    assert WINDOW - first - 0.01 <= waits[("iotda",)] < WINDOW + 0.5
    tokens = emulator_statuses(emulator)[("iam.token", "201")]
    assert tokens == 2  # the first, and the one after the rejection
    assert s["fusefs_token_refreshes_total"] == {("iam",): tokens}


async def test_no_answer_is_counted_by_kind(
    recording: tuple[str, int],
) -> None:
    """Refused connections and silent servers, on the API path (httpx) and on the worker-thread
    download path: one request each time, labelled with the kind of failure."""
    address = recording
    policy = RetryPolicy(attempts=2, base_delay=0.001, max_delay=0.01, unavailable_attempts=2)
    with socket.socket() as refused, socket.socket() as silent:
        refused.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections are queued, never answered
        for sock, kind in ((refused, Unavailable), (silent, TransientError)):
            host, port = sock.getsockname()
            url = f"http://{host}:{port}"
            async with httpx.AsyncClient(timeout=0.2) as client:
                meter(client)
                kd = KoodriveProvider(
                    client, url=url, containers=[ContainerSpec("c")], token="t",
                    retry_policy=policy,
                )  # fmt: skip
                with pytest.raises(kind):
                    await kd.list_dir("c/c")

            async def target(stale: bool, url: str = url) -> Target:
                return Target(f"{url}/obj", {})

            bulk = BulkClient(connect_timeout=0.2, read_timeout=0.2)
            try:
                with pytest.raises(kind):
                    await download_range(bulk, "koodrive.obsGet", target, 0, 10, Sink(0),
                                         policy=policy)  # fmt: skip
            finally:
                bulk.close()
    s = scrape(address)
    assert s["fusefs_requests_total"] == {
        ("listFiles", "koodrive", "connect"): 2,
        ("obsGet", "koodrive", "connect"): 2,
        ("listFiles", "koodrive", "timeout"): 2,
        ("obsGet", "koodrive", "timeout"): 2,
    }
    assert s["fusefs_retries_total"] == {("listFiles", "koodrive"): 2, ("obsGet", "koodrive"): 2}
