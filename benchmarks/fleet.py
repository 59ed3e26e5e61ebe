"""The fleet row: the same cold file read at once on 3 fusefs mounts, with and without the
shared Redis tier (docs/fleet.md). Measured: the bytes the cloud (the emulator's KooDrive object
route) sent, and the wall time until all three readers had every byte (checked by MD5).

The emulator here serves the bytes itself (no ``--link-base``): its stats count them. LAN only
(no added latency): the saving is in bytes, which latency does not change."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .dataset import Dataset
from .util import PY, BenchError, Proc, free_port, fuse_unmount, is_mount, say, tail, wait_port_file

HOSTS = 3
MOUNT_TIMEOUT = 60.0


@dataclass
class FleetResult:
    with_tier: bool
    cloud_bytes: int
    wall_s: float
    file_bytes: int


def _admin(url: str, method: str, path: str) -> Any:
    req = urllib.request.Request(url + path, method=method)
    with urllib.request.urlopen(req, timeout=30) as r:
        body = r.read()
    return json.loads(body) if body else None


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _config(work: Path, ds: Dataset, emulator: str, i: int, redis_url: str | None) -> Path:
    cache = work / "cache" / f"fleet-{i}"
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    lines = [
        "[cache]",
        f"dir = {json.dumps(str(cache))}",
        "",
        "[koodrive]",
        f"url = {json.dumps(emulator)}",
        'auth = "token"',
        'token_env = "FUSEFS_KOODRIVE_TOKEN"',
        f"containers = [{{ id = {json.dumps(ds.container_id)} }}]",
    ]
    if redis_url:
        lines += ["", "[fleet]", f"url = {json.dumps(redis_url)}", 'key_prefix = "bench"']
    cfg = work / f"fleet-{i}.toml"
    cfg.write_text("# written by scripts/bench\n" + "\n".join(lines) + "\n")
    cfg.chmod(0o600)
    return cfg


def _one_round(
    work: Path, ds: Dataset, emulator: str, redis_url: str | None, commands: list[str]
) -> FleetResult:
    procs: list[tuple[Proc, Path]] = []
    env = {**os.environ, "FUSEFS_KOODRIVE_TOKEN": ds.token}
    try:
        for i in range(HOSTS):
            mnt = work / "mnt" / f"fleet-{i}"
            fuse_unmount(mnt)
            mnt.mkdir(parents=True, exist_ok=True)
            cfg = _config(work, ds, emulator, i, redis_url)
            argv = [PY, "-m", "fusefs", "mount", "--foreground", "--config", str(cfg), str(mnt)]
            if i == 0:
                commands.append(" ".join(argv))
            log = work / "logs" / f"fleet-{i}.log"
            procs.append((Proc(f"fleet-{i}", argv, log, env=env).start(), mnt))
        paths = []
        for proc, mnt in procs:
            deadline = time.monotonic() + MOUNT_TIMEOUT
            path = mnt / "koodrive" / ds.container_id / "big.bin"
            while not path.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"fleet mount {mnt} did not come up:\n{tail(proc.log)}")
                time.sleep(0.05)
            paths.append(path)
        want = ds.md5s["files/big.bin"]
        _admin(emulator, "POST", "/_admin/stats/reset")
        got: list[str] = []
        t0 = time.perf_counter()
        threads = [threading.Thread(target=lambda p=p: got.append(_md5(p))) for p in paths]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        if got != [want] * HOSTS:
            raise BenchError(f"fleet read returned wrong bytes: {got} (want {want})")
        sent = _admin(emulator, "GET", "/_admin/stats").get("bytes", {})
        return FleetResult(
            redis_url is not None, int(sent.get("koodrive.obs", 0)), wall, ds.spec.big
        )
    finally:
        for proc, mnt in procs:
            fuse_unmount(mnt)
            proc.stop()
            if is_mount(mnt):
                fuse_unmount(mnt)


def measure(work: Path, ds: Dataset) -> tuple[list[FleetResult], list[str]]:
    """Both rounds; raises BenchError (the bench reports the row as failed)."""
    redis = shutil.which("redis-server")
    if redis is None:
        raise BenchError("redis-server is missing (scripts/install installs it)")
    commands: list[str] = []
    port = free_port()
    rdir = work / "redis"
    rdir.mkdir(parents=True, exist_ok=True)
    argv = [redis, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(rdir)]
    argv += ["--save", "", "--appendonly", "no", "--maxmemory-policy", "volatile-lru"]
    rproc = Proc("redis", argv, work / "logs" / "redis.log").start()
    commands.append(" ".join(argv))
    port_file = work / "emulator-fleet.port"
    port_file.unlink(missing_ok=True)
    faults = work / "faults-fleet.json"
    faults.write_text(json.dumps({"presign_expires": 86400}))
    eargv = [PY, "-m", "fusefs.emulator", "--world", str(ds.root), "--port-file", str(port_file)]
    eargv += ["--faults", str(faults)]
    eproc = Proc("emulator-fleet", eargv, work / "logs" / "emulator-fleet.log").start()
    commands.append(" ".join(eargv))
    try:
        emulator = f"http://127.0.0.1:{wait_port_file(port_file, eproc)}"
        out = []
        for redis_url in (None, f"redis://127.0.0.1:{port}/0"):
            label = "with" if redis_url else "without"
            say(f"fleet: {HOSTS} mounts read big.bin cold at once, {label} the tier")
            out.append(_one_round(work, ds, emulator, redis_url, commands))
        return out, commands
    finally:
        eproc.stop()
        rproc.stop()
        for i in range(HOSTS):
            shutil.rmtree(work / "cache" / f"fleet-{i}", ignore_errors=True)
