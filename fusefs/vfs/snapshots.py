"""Listing snapshots on disk: the last listing of every directory, kept across restarts.

They let the mount start and serve the last known tree while a provider is unreachable
(offline mode), and keep one-shot objects (ROMA archives) visible after the API stops listing
them. One JSON file per directory, written atomically (tmp + rename).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path

from fusefs.providers.base import EntryKind, RemoteEntry

log = logging.getLogger(__name__)


class ListingStore:
    def __init__(self, root: Path) -> None:
        self.root = root / "v1" / "listings"

    def _path(self, provider: str, key: str) -> Path:
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return self.root / provider / f"{digest}.json"

    def save(self, provider: str, key: str, entries: list[RemoteEntry]) -> None:
        path = self._path(provider, key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            data = {
                "key": key,
                "saved_at": time.time(),
                "entries": [{**dataclasses.asdict(e), "kind": e.kind.value} for e in entries],
            }
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, ensure_ascii=True))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("could not save the listing of %s:%s: %s", provider, key, exc)

    def load(self, provider: str, key: str) -> tuple[float, list[RemoteEntry]] | None:
        path = self._path(provider, key)
        try:
            data = json.loads(path.read_text())
            if data.get("key") != key:
                return None
            entries = [RemoteEntry(**{**e, "kind": EntryKind(e["kind"])}) for e in data["entries"]]
            return float(data["saved_at"]), entries
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("dropping unreadable listing snapshot %s: %s", path, exc)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
