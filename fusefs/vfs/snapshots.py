"""Listing snapshots on disk: the last listing of every directory, kept across restarts.

They let the mount start and serve the last known tree while a provider is unreachable
(offline mode), and keep one-shot objects (ROMA archives) visible after the API stops listing
them. One JSON file per directory, written atomically (tmp + rename).

Saving a 10,000-entry listing costs tens of milliseconds of serialisation and a file write, so
it never runs on the event loop: ``save_soon`` records the listing as *pending* and one task
(``run``) writes pending listings, one at a time, in a worker thread, ``save_delay`` after the
refresh. A directory refreshed again before its save ran is written once, with the newer
listing; since one task does every write, an older listing can never overwrite a newer one.
``load`` sees pending listings; pending listings are written when ``run`` ends (unmount).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import trio

from fusefs.providers.base import EntryKind, RemoteEntry

log = logging.getLogger(__name__)

# json.dumps holds the GIL for the whole call: encode big listings in pieces, so that the event
# loop thread gets the GIL back between them (a 10,000-entry listing in one call: ~30 ms)
_CHUNK = 250


def _encode(key: str, saved_at: float, entries: Sequence[RemoteEntry]) -> str:
    head = json.dumps({"key": key, "saved_at": saved_at}, ensure_ascii=True)[:-1]
    parts = [
        json.dumps([_entry_json(e) for e in entries[i : i + _CHUNK]], separators=(",", ":"))[1:-1]
        for i in range(0, len(entries), _CHUNK)
    ]
    return f'{head}, "entries": [{",".join(parts)}]}}'


def _entry_json(e: RemoteEntry) -> dict[str, object]:
    # not dataclasses.asdict: that deep-copies every field and is ~10x slower on big listings
    return {
        "name": e.name,
        "remote_id": e.remote_id,
        "kind": e.kind.value,
        "key": e.key,
        "size": e.size,
        "mtime_ns": e.mtime_ns,
        "ctime_ns": e.ctime_ns,
        "version": e.version,
        "md5": e.md5,
        "extra": e.extra,
    }


class ListingStore:
    def __init__(self, root: Path, *, save_delay: float = 0.5) -> None:
        self.root = root / "v1" / "listings"
        # a refresh is usually followed by a burst of requests for its entries (`ls -l`:
        # READDIRPLUS, then a stat of each): save after it, not competing for the GIL with it
        self.save_delay = save_delay
        # path -> (provider, key, saved_at, entries) not yet on disk; insertion order = age
        self._pending: dict[Path, tuple[str, str, float, Sequence[RemoteEntry]]] = {}
        self._wake = trio.Event()
        self._running = False

    def _path(self, provider: str, key: str) -> Path:
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return self.root / provider / f"{digest}.json"

    # -- writing -----------------------------------------------------------------------------
    def save_soon(self, provider: str, key: str, entries: Sequence[RemoteEntry]) -> None:
        """Save in the background (``run``); without a running ``run``, at once."""
        path = self._path(provider, key)
        item = (provider, key, time.time(), tuple(entries))
        if not self._running:
            self._write(path, item)
            return
        self._pending.pop(path, None)  # re-insert: the newest listing goes to the back
        self._pending[path] = item
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write pending listings in a worker thread until cancelled; then write the rest."""
        self._running = True
        task_status.started()
        try:
            while True:
                await self._wake.wait()
                await trio.sleep(self.save_delay)
                self._wake = trio.Event()
                while self._pending:
                    path = next(iter(self._pending))
                    item = self._pending[path]
                    await trio.to_thread.run_sync(self._write, path, item)
                    # only now: until the file is replaced, load() must see the pending listing
                    if self._pending.get(path) is item:
                        del self._pending[path]
        finally:
            self._running = False
            self.flush_nowait()

    def flush_nowait(self) -> None:
        """Write every pending listing now, on this thread (shutdown)."""
        while self._pending:
            path, item = self._pending.popitem()
            self._write(path, item)

    def _write(self, path: Path, item: tuple[str, str, float, Sequence[RemoteEntry]]) -> None:
        provider, key, saved_at, entries = item
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            text = _encode(key, saved_at, entries)
            # one tmp name per daemon: two mounts may share a cache directory
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
            try:
                # 0600: names, ids and sizes of private cloud files
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(text)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
            log.debug("saved the listing of %s:%s (%d entries)", provider, key, len(entries))
        except OSError as exc:
            log.warning("could not save the listing of %s:%s: %s", provider, key, exc)

    # -- reading -----------------------------------------------------------------------------
    def load(self, provider: str, key: str) -> tuple[float, list[RemoteEntry]] | None:
        path = self._path(provider, key)
        pending = self._pending.get(path)
        if pending is not None:
            return pending[2], list(pending[3])
        try:
            data = json.loads(path.read_text())
            if data.get("key") != key:
                return None
            entries = [RemoteEntry(**{**e, "kind": EntryKind(e["kind"])}) for e in data["entries"]]
            return float(data["saved_at"]), entries
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("dropping unreadable listing snapshot %s: %s", path, exc)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
