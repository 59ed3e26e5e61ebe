"""The limits of the machine and of the servers, measured in the same run with plain clients."""

from __future__ import annotations

import http.client
import json
import os
import resource
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .dataset import Dataset
from .measures import offsets, random_reads, seq_read
from .util import BenchError, GiB, WrongBytes, drop_caches


def _connection(url: str, ca: Path | None, timeout: float = 60) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port
    if parts.scheme == "https":
        ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
        return http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
    return http.client.HTTPConnection(host, port, timeout=timeout)


@dataclass
class CurlResult:
    mbps: float
    cpu_per_gib: float


def curl(url: str, ca: Path | None, expect_size: int) -> CurlResult:
    """``curl -o /dev/null`` of one object: MB/s and curl's CPU seconds per GiB."""
    argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download} %{time_total}"]
    if ca is not None:
        argv += ["--cacert", str(ca)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run([*argv, url], capture_output=True, text=True, check=False, timeout=600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise BenchError(f"curl {url}: {p.stderr.strip()}")
    size_s, secs_s = p.stdout.split()
    size, secs = int(float(size_s)), float(secs_s)
    if size != expect_size:
        raise WrongBytes(f"curl {url}: {size} bytes, expected {expect_size}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return CurlResult(size / secs / 1e6, cpu / (size / GiB))


def curl_parallel(url: str, ca: Path | None, size: int, readers: int) -> float:
    """``readers`` curls of distinct ranges at once: aggregate MB/s."""
    procs = []
    t0 = time.perf_counter()
    for k in range(readers):
        lo, hi = k * size // readers, (k + 1) * size // readers - 1
        argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}", "-r", f"{lo}-{hi}"]
        if ca is not None:
            argv += ["--cacert", str(ca)]
        procs.append(subprocess.Popen([*argv, url], stdout=subprocess.PIPE, text=True))
    total = 0
    for p in procs:
        out, _ = p.communicate(timeout=600)
        if p.returncode != 0:
            raise BenchError(f"parallel curl failed ({p.returncode})")
        total += int(float(out))
    elapsed = time.perf_counter() - t0
    if total != size:
        raise WrongBytes(f"parallel curl: {total} bytes, expected {size}")
    return total / elapsed / 1e6


def range_gets(url: str, ca: Path | None, source: Path, n: int, seed: int) -> list[float]:
    """``n`` 4 KiB Range GETs on one persistent connection: latencies in ms, bytes checked."""
    conn = _connection(url, ca)
    path = urlsplit(url).path
    size = source.stat().st_size
    lat: list[float] = []
    fd = os.open(source, os.O_RDONLY)
    try:
        conn.request("HEAD", path)  # connect (and TLS) outside the timed requests
        conn.getresponse().read()
        for off in offsets(size, n, seed):
            t0 = time.perf_counter_ns()
            conn.request("GET", path, headers={"Range": f"bytes={off}-{off + 4095}"})
            resp = conn.getresponse()
            body = resp.read()
            lat.append((time.perf_counter_ns() - t0) / 1e6)
            if resp.status != 206 or body != os.pread(fd, 4096, off):
                raise WrongBytes(f"Range GET {url} at {off}: status {resp.status}, bytes differ")
    finally:
        os.close(fd)
        conn.close()
    return lat


@dataclass
class SeriesResult:
    seconds: float  # for all files (extrapolated when capped)
    done: int
    total: int

    @property
    def complete(self) -> bool:
        return self.done >= self.total


def gets_in_series(base_url: str, ds: Dataset, cap_s: float) -> SeriesResult:
    """GET every small file, one after another, on one persistent connection."""
    conn = _connection(base_url, None)
    prefix = urlsplit(base_url).path.rstrip("/")
    names = ds.small_names()
    done = 0
    try:
        t0 = time.perf_counter()
        for name in names:
            conn.request("GET", f"{prefix}/small/{name}")
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200 or body != (ds.small / name).read_bytes():
                raise WrongBytes(f"GET {name}: status {resp.status}, bytes differ")
            done += 1
            if time.perf_counter() - t0 > cap_s:
                break
        elapsed = time.perf_counter() - t0
    finally:
        conn.close()
    return SeriesResult(elapsed * len(names) / done, done, len(names))


def _koo_post(conn: http.client.HTTPConnection, ds: Dataset, path: str, body: object) -> object:
    conn.request(
        "POST",
        path,
        body=json.dumps(body),
        headers={"Authorization": ds.token, "Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise BenchError(f"emulator {path}: {resp.status} {data[:300]!r}")
    return json.loads(data)


def page_listing(emulator_url: str, ds: Dataset) -> float:
    """Seconds to page the KooDrive listing of the small-file folder (100 per page)."""
    conn = _connection(emulator_url, None)
    folder = ds.entry_id("small")
    names: list[str] = []
    try:
        t0 = time.perf_counter()
        cursor = ""
        while True:
            page = _koo_post(
                conn,
                ds,
                "/koodrive/ose/v1/files/0",
                {
                    "containerId": ds.container_id,
                    "parentFileId": folder,
                    "pageInfo": {"pageSize": 100, "pageCursor": cursor},
                },
            )
            assert isinstance(page, dict)
            names += [f["fileName"] for f in page["files"]]
            cursor = page.get("nextCursor", "")
            if not cursor:
                break
        elapsed = time.perf_counter() - t0
    finally:
        conn.close()
    if sorted(names) != ds.small_names():
        raise WrongBytes(f"listing API: {len(names)} names, expected {ds.spec.small_count}")
    return elapsed


def link_batches(emulator_url: str, ds: Dataset) -> float:
    """Seconds to get the download links of every small file, 100 ids per call (the first half
    of the emulator's serial floor for cp -r; the GETs are the series measured above)."""
    conn = _connection(emulator_url, None)
    ids = ds.small_ids()
    got = 0
    t0 = time.perf_counter()
    try:
        for i in range(0, len(ids), 100):
            answer = _koo_post(
                conn,
                ds,
                "/koodrive/ose/v1/files/download",
                {"containerId": ds.container_id, "fileIds": ids[i : i + 100]},
            )
            assert isinstance(answer, dict)
            got += sum(1 for d in answer["downloads"] if d.get("url"))
    finally:
        conn.close()
    if got != len(ids):
        raise BenchError(f"links: {got} urls for {len(ids)} files")
    return time.perf_counter() - t0


def local_limits(ds: Dataset, rand_n: int, seed: int) -> dict[str, float]:
    """Disk and page cache on the local copy of the big file; ls -l of the source folder."""
    out: dict[str, float] = {}
    drop_caches()
    seq_read(ds.local_copy, cap_s=600)  # warm-up: the VM's disk has a host-side cache
    drop_caches()
    r = seq_read(ds.local_copy, cap_s=600)
    out["disk_MBps"] = r.mbps
    seq_read(ds.local_copy, cap_s=600)
    out["page_cache_MBps"] = seq_read(ds.local_copy, cap_s=600).mbps
    offs = offsets(ds.spec.big, rand_n, seed)
    drop_caches()
    cold = random_reads(ds.local_copy, ds.big, offs, cap_s=600)
    out["disk_pread_mean_ms"] = cold.mean
    out["disk_pread_p50_ms"] = cold.p50
    warm = random_reads(ds.local_copy, ds.big, offs, cap_s=600)
    out["page_cache_pread_mean_ms"] = warm.mean
    out["page_cache_pread_p50_ms"] = warm.p50
    subprocess.run(["ls", "-l", str(ds.small)], capture_output=True, check=True)
    t0 = time.perf_counter()
    subprocess.run(["ls", "-l", str(ds.small)], capture_output=True, check=True)
    out["ls_l_local_warm_s"] = time.perf_counter() - t0
    return out
