"""The one data set, built once: plain files under nginx's root and the same bytes as an emulator
world (``python -m fusefs.emulator.world from-files``: one KooDrive space mirroring ``files/``,
every object a blob at its own path, so the emulator's links can point at nginx).

```
.fusefs-bench/data-<full|quick>/   nginx root and emulator world dir
  world.json
  files/big.bin        1 GiB random (quick: 256 MiB), seeded
  files/mid.bin        64 MiB random (quick: 16 MiB): the random-read file
  files/small/f00000.bin … 10,000 × 1 KiB random (quick: 1,000)
  files/huge.bin       10 GiB (quick: 1 GiB): each MiB starts with sha256("huge:<i>"), then zeros
                       (sparse on disk; every MiB is checkable and unique)
  dataset.json         sizes, md5s, the build's parameters (its presence = complete)
.fusefs-bench/local-<mode>.bin  a copy of big.bin for the local-disk limits (never pinned)
```
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .util import PY, ROOT, GiB, MiB, Proc, say

FORMAT = 2
SEED = 20261123


@dataclass(frozen=True)
class Spec:
    mode: str
    big: int
    mid: int
    small_count: int
    small_size: int
    huge: int


SPECS = {
    "full": Spec("full", GiB, 64 * MiB, 10_000, 1024, 10 * GiB),
    "quick": Spec("quick", 256 * MiB, 16 * MiB, 1_000, 1024, GiB),
}


def huge_header(index: int) -> bytes:
    return hashlib.sha256(f"fusefs-bench-huge:{index}".encode()).digest()


@dataclass
class Dataset:
    spec: Spec
    root: Path  # nginx root = emulator world dir
    local_copy: Path
    world: dict[str, Any]
    md5s: dict[str, str]

    @property
    def files(self) -> Path:
        return self.root / "files"

    @property
    def big(self) -> Path:
        return self.files / "big.bin"

    @property
    def mid(self) -> Path:
        return self.files / "mid.bin"

    @property
    def huge(self) -> Path:
        return self.files / "huge.bin"

    @property
    def small(self) -> Path:
        return self.files / "small"

    def small_names(self) -> list[str]:
        return [f"f{i:05d}.bin" for i in range(self.spec.small_count)]

    @property
    def container(self) -> dict[str, Any]:
        (c,) = self.world["koodrive"]["containers"]
        return dict(c)

    @property
    def container_id(self) -> str:
        return str(self.container["containerId"])

    @property
    def token(self) -> str:
        return str(self.world["credentials"]["koodrive"]["token"])

    def entry_id(self, name: str, parent: str = "root") -> str:
        for e in self.container["entries"]:
            if e["fileName"] == name and e["parentId"] == parent:
                return str(e["id"])
        raise KeyError(name)

    def small_ids(self) -> list[str]:
        folder = self.entry_id("small")
        return [str(e["id"]) for e in self.container["entries"] if e["parentId"] == folder]

    def pin_list(self) -> list[Path]:
        """Files kept in memory (mlocked) so drop_caches only drops the systems' caches."""
        return [self.big, self.mid, *(self.small / n for n in self.small_names())]


def _write_random(path: Path, size: int, seed: int) -> str:
    rng = random.Random(seed)
    h = hashlib.md5()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = rng.randbytes(min(4 * MiB, left))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return h.hexdigest()


def _write_huge(path: Path, size: int) -> str:
    with open(path, "wb") as f:
        f.truncate(size)
        for i in range((size + MiB - 1) // MiB):
            os.pwrite(f.fileno(), huge_header(i)[: min(32, size - i * MiB)], i * MiB)
    h = hashlib.md5()
    zeros = bytes(MiB)
    for i in range((size + MiB - 1) // MiB):
        n = min(MiB, size - i * MiB)
        h.update(huge_header(i)[: min(32, n)])
        h.update(zeros[: max(0, n - 32)])
    return h.hexdigest()


def ensure(work: Path, mode: str) -> Dataset:
    spec = SPECS[mode]
    root = work / f"data-{mode}"
    local_copy = work / f"local-{mode}.bin"
    stamp = root / "dataset.json"
    params = {"format": FORMAT, "seed": SEED, **spec.__dict__}
    if stamp.exists():
        meta = json.loads(stamp.read_text())
        if meta.get("params") == params and (root / "world.json").exists():
            if not local_copy.exists() or local_copy.stat().st_size != spec.big:
                shutil.copyfile(root / "files" / "big.bin", local_copy)
            world = json.loads((root / "world.json").read_text())
            return Dataset(spec, root, local_copy, world, meta["md5s"])
    say(f"building the {mode} data set in {root} (once) ...")
    t0 = time.perf_counter()
    shutil.rmtree(root, ignore_errors=True)
    files = root / "files"
    (files / "small").mkdir(parents=True)
    md5s: dict[str, str] = {}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        huge = pool.submit(_write_huge, files / "huge.bin", spec.huge)
        md5s["files/big.bin"] = _write_random(files / "big.bin", spec.big, SEED)
        md5s["files/mid.bin"] = _write_random(files / "mid.bin", spec.mid, SEED + 1)
        rng = random.Random(SEED + 2)
        for i in range(spec.small_count):
            data = rng.randbytes(spec.small_size)
            (files / "small" / f"f{i:05d}.bin").write_bytes(data)
            md5s[f"files/small/f{i:05d}.bin"] = hashlib.md5(data).hexdigest()
        md5s["files/huge.bin"] = huge.result()
    md5_file = root / "md5s.json"
    md5_file.write_text(json.dumps(md5s))
    # the emulator's own world builder: the bench stays independent of the daemon's code
    log = work / "logs" / "world.log"
    proc = Proc(
        "world",
        [
            PY,
            "-m",
            "fusefs.emulator.world",
            "from-files",
            str(root),
            "--subdir",
            "files",
            "--md5s",
            str(md5_file),
        ],
        log,
    ).start()
    assert proc.popen is not None
    if proc.popen.wait(timeout=600) != 0:
        raise RuntimeError(f"world builder failed; see {log}")
    shutil.copyfile(files / "big.bin", local_copy)
    stamp.write_text(json.dumps({"params": params, "md5s": md5s}, indent=1))
    say(f"data set ready in {time.perf_counter() - t0:.1f} s")
    world = json.loads((root / "world.json").read_text())
    return Dataset(spec, root, local_copy, world, md5s)


def start_pinner(ds: Dataset, work: Path) -> Proc:
    """``python -m benchmarks.pin``: mlock the source files (nginx's bytes stay in memory)."""
    listing = work / "pin-list.txt"
    listing.write_text("\n".join(str(p) for p in ds.pin_list()) + "\n")
    ready = work / "pin.ready"
    ready.unlink(missing_ok=True)
    proc = Proc(
        "pinner",
        [PY, "-m", "benchmarks.pin", str(listing), str(ready)],
        work / "logs" / "pin.log",
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).start()
    deadline = time.monotonic() + 120
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.stop()
            raise RuntimeError(f"pinner failed: {(work / 'logs' / 'pin.log').read_text()[-800:]}")
        time.sleep(0.05)
    return proc
