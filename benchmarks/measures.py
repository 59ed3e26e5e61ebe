"""The measures on a path (a mount or a local file) and the checks of what they read.

Timed reads do nothing but read (1 MiB ``readinto`` of a reused buffer, like ``dd bs=1M``):
checking bytes inside the timed loop would cap the page-cache figures at the checksum's speed.
Every timed read is followed by an untimed check that reads the same range through the same
system and compares it with the source, byte for byte; random reads, ``cp -r`` and ``ls -l`` are
checked exactly on what the timed step returned, and the 10 GiB stream checks every MiB as it
arrives (its pattern is cheap to check).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .dataset import huge_header
from .util import BenchError, MiB, WrongBytes, median

READ = MiB
CHECK = 4 * MiB


@dataclass
class ReadResult:
    nbytes: int
    seconds: float
    complete: bool  # False: stopped by the time cap

    @property
    def mbps(self) -> float:
        return self.nbytes / self.seconds / 1e6 if self.seconds > 0 else float("nan")


def seq_read(path: Path, cap_s: float, limit: int | None = None) -> ReadResult:
    """Read ``path`` from 0 (up to ``limit`` bytes) until EOF or ``cap_s`` seconds."""
    buf = bytearray(READ)
    view = memoryview(buf)
    total = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        t0 = time.perf_counter()
        deadline = t0 + cap_s
        while limit is None or total < limit:
            want = READ if limit is None else min(READ, limit - total)
            n = os.readv(fd, [view[:want]])
            if n == 0:
                break
            total += n
            if time.perf_counter() > deadline:
                break
        elapsed = time.perf_counter() - t0
    finally:
        os.close(fd)
    size = path.stat().st_size
    complete = total >= (size if limit is None else min(limit, size))
    return ReadResult(total, elapsed, complete)


def check_range(path: Path, source: Path, length: int, offset: int = 0) -> None:
    """Compare ``length`` bytes at ``offset`` of ``path`` with ``source`` (WrongBytes if not)."""
    got, want = bytearray(CHECK), bytearray(CHECK)
    fd, sfd = os.open(path, os.O_RDONLY), os.open(source, os.O_RDONLY)
    try:
        pos, end = offset, offset + length
        while pos < end:
            n = min(CHECK, end - pos)
            a = _pread_full(fd, got, n, pos)
            b = _pread_full(sfd, want, n, pos)
            same = got == want if a == b == CHECK else got[:a] == want[:b]
            if not same:
                bad = next(
                    (i for i in range(min(a, b)) if got[i] != want[i]),
                    min(a, b),
                )
                raise WrongBytes(
                    f"{path}: byte {pos + bad} differs from the source {source} "
                    f"(got {a} bytes of {n} at {pos})"
                )
            pos += n
    finally:
        os.close(fd)
        os.close(sfd)


def _pread_full(fd: int, buf: bytearray, n: int, pos: int) -> int:
    view = memoryview(buf)
    done = 0
    while done < n:
        got = os.preadv(fd, [view[done:n]], pos + done)
        if got == 0:
            break
        done += got
    return done


def offsets(size: int, n: int, seed: int, block: int = 4096) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(0, size // block) * block for _ in range(n)]


@dataclass
class RandomResult:
    latencies_ms: list[float]
    wanted: int

    @property
    def mean(self) -> float:
        return sum(self.latencies_ms) / len(self.latencies_ms) if self.latencies_ms else 0.0

    @property
    def p50(self) -> float:
        return median(self.latencies_ms)

    @property
    def complete(self) -> bool:
        return len(self.latencies_ms) >= self.wanted


def random_reads(path: Path, source: Path, offs: list[int], cap_s: float) -> RandomResult:
    """4 KiB ``pread``s at ``offs`` on one open file; each checked against the source."""
    fd, sfd = os.open(path, os.O_RDONLY), os.open(source, os.O_RDONLY)
    lat: list[float] = []
    try:
        deadline = time.perf_counter() + cap_s
        for off in offs:
            t0 = time.perf_counter_ns()
            got = os.pread(fd, 4096, off)
            lat.append((time.perf_counter_ns() - t0) / 1e6)
            if got != os.pread(sfd, 4096, off):
                raise WrongBytes(f"{path}: the 4 KiB at {off} differ from the source")
            if time.perf_counter() > deadline:
                break
    finally:
        os.close(fd)
        os.close(sfd)
    return RandomResult(lat, len(offs))


def ls_l(folder: Path, expected: dict[str, int], timeout: float) -> float:
    """Seconds of ``ls -l folder``; its names and sizes must be the source's."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(
            ["ls", "-l", str(folder)], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise TimedOut(f"ls -l took more than {timeout:g} s", timeout) from exc
    elapsed = time.perf_counter() - t0
    if p.returncode != 0:
        raise BenchError(f"ls -l failed ({p.returncode}): {p.stderr[-500:]}")
    seen: dict[str, int] = {}
    for line in p.stdout.splitlines():
        parts = line.split(None, 8)
        if len(parts) == 9:
            seen[parts[8]] = int(parts[4])
    if seen != expected:
        missing = sorted(set(expected) - set(seen))[:3]
        extra = sorted(set(seen) - set(expected))[:3]
        wrong = [k for k in expected if k in seen and seen[k] != expected[k]][:3]
        raise WrongBytes(
            f"ls -l {folder}: {len(seen)} entries, missing {missing}, extra {extra}, "
            f"wrong sizes {wrong}"
        )
    return elapsed


class TimedOut(BenchError):
    def __init__(self, msg: str, seconds: float) -> None:
        super().__init__(msg)
        self.seconds = seconds


@dataclass
class CopyResult:
    seconds: float
    done: int
    total: int

    @property
    def complete(self) -> bool:
        return self.done >= self.total

    @property
    def files_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else float("nan")

    @property
    def seconds_for_all(self) -> float:
        """The time for every file: measured, or extrapolated from files/s when capped."""
        if self.complete:
            return self.seconds
        return self.total / self.files_per_s if self.done else float("inf")


def cp_r(folder: Path, source: Path, dest_root: Path, cap_s: float) -> CopyResult:
    """``cp -r folder dest`` (stopped after ``cap_s``); every copied file checked."""
    shutil.rmtree(dest_root, ignore_errors=True)
    dest_root.mkdir(parents=True)
    dest = dest_root / "copy"
    names = sorted(os.listdir(source))
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        ["cp", "-r", str(folder), str(dest)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _, err = proc.communicate(timeout=cap_s)
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise BenchError(f"cp -r failed ({proc.returncode}): {err[-500:].decode()}")
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        elapsed = time.perf_counter() - t0
    done = 0
    for name in names:
        copied = dest / name
        try:
            got = copied.read_bytes()
        except FileNotFoundError:
            continue
        want = (source / name).read_bytes()
        if got == want:
            done += 1
        elif len(got) >= len(want) or proc.returncode == 0:
            raise WrongBytes(f"cp -r: {copied} differs from the source {source / name}")
        # else: the file cp was writing when it was stopped
    if proc.returncode == 0 and done != len(names):
        raise WrongBytes(f"cp -r copied {done} of {len(names)} files")
    shutil.rmtree(dest_root, ignore_errors=True)
    return CopyResult(elapsed, done, len(names))


@dataclass
class ParallelResult:
    nbytes: int
    seconds: float
    regions: list[tuple[int, int]]  # (offset, bytes read) per reader
    complete: bool

    @property
    def mbps(self) -> float:
        return self.nbytes / self.seconds / 1e6 if self.seconds > 0 else float("nan")


def parallel_read(
    path: Path, readers: int, cap_s: float, span: tuple[int, int] | None = None
) -> ParallelResult:
    """``readers`` threads, each reading its own contiguous region of ``span`` (default: the whole
    file) sequentially, until done or ``cap_s``."""
    lo_all, hi_all = span or (0, path.stat().st_size)
    width = hi_all - lo_all
    bounds = [
        (lo_all + k * width // readers, lo_all + (k + 1) * width // readers) for k in range(readers)
    ]
    got = [0] * readers
    errors: list[BaseException] = []
    start = threading.Barrier(readers + 1)
    deadline = [0.0]

    def reader(k: int) -> None:
        lo, hi = bounds[k]
        buf = bytearray(READ)
        view = memoryview(buf)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            errors.append(exc)
            start.wait()
            return
        try:
            start.wait()
            pos = lo
            while pos < hi:
                n = os.preadv(fd, [view[: min(READ, hi - pos)]], pos)
                if n == 0:
                    break
                pos += n
                got[k] += n
                if time.perf_counter() > deadline[0]:
                    break
        except OSError as exc:
            errors.append(exc)
        finally:
            os.close(fd)

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(readers)]
    for t in threads:
        t.start()
    deadline[0] = time.perf_counter() + cap_s
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise BenchError(f"parallel read: {errors[0]!r}")
    complete = all(got[k] >= hi - lo for k, (lo, hi) in enumerate(bounds))
    return ParallelResult(
        sum(got), elapsed, [(b[0], g) for b, g in zip(bounds, got, strict=True)], complete
    )


@dataclass
class StreamResult:
    nbytes: int
    seconds: float
    complete: bool


def stream_huge(path: Path, cap_s: float) -> StreamResult:
    """Read the huge pattern object sequentially, checking every MiB as it arrives."""
    size = path.stat().st_size
    buf = bytearray(MiB)
    expect = bytearray(MiB)
    fd = os.open(path, os.O_RDONLY)
    total = 0
    try:
        t0 = time.perf_counter()
        deadline = t0 + cap_s
        index = 0
        while total < size:
            want = min(MiB, size - total)
            n = _pread_full(fd, buf, want, total)
            if n < want:
                raise WrongBytes(f"{path}: EOF at {total + n} of {size}")
            expect[:32] = huge_header(index)
            same = buf == expect if want == MiB else buf[:want] == expect[:want]
            if not same:
                raise WrongBytes(f"{path}: MiB {index} differs from the source pattern")
            total += want
            index += 1
            if time.perf_counter() > deadline:
                break
        elapsed = time.perf_counter() - t0
    finally:
        os.close(fd)
    return StreamResult(total, elapsed, total >= size)
