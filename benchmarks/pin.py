"""``python -m benchmarks.pin LIST READY``: map and mlock every file named in LIST, touch READY,
then hold them until SIGTERM. Mapped, locked pages survive ``drop_caches``: the bench drops the
systems' caches before each cold run while nginx keeps serving its bytes from memory."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import resource
import signal
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    listing, ready = Path(argv[0]), Path(argv[1])
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    try:
        resource.setrlimit(
            resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        )
    except (ValueError, OSError) as exc:
        print(f"pin: cannot raise RLIMIT_MEMLOCK: {exc}", file=sys.stderr)
    total = 0
    for line in listing.read_text().splitlines():
        if not line:
            continue
        fd = os.open(line, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                continue
            addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if addr in (None, ctypes.c_void_p(-1).value):
                raise OSError(ctypes.get_errno(), f"mmap {line}")
            if libc.mlock(ctypes.c_void_p(addr), ctypes.c_size_t(size)) != 0:
                raise OSError(ctypes.get_errno(), f"mlock {line}")
            total += size
        finally:
            os.close(fd)
    print(f"pin: {total / 2**20:.0f} MiB locked", flush=True)
    ready.write_text(f"{total}\n")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
