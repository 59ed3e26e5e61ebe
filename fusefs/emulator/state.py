"""In-memory state of the emulator, loaded from ``world.json`` (see docs/world.md).

The world sections are kept as the JSON dicts of world.json (their shapes are already the API
shapes); this module indexes them and holds the mutable parts (tokens, new IoTDA tasks, consumed
ROMA archives, stale snapshots for the index lag, statistics).
"""

from __future__ import annotations

import collections
import copy
import hashlib
import io
import json
import logging
import secrets
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .content import Content, iter_range, md5_of_generated
from .faults import FaultEngine

log = logging.getLogger(__name__)

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Body:
    """Bytes of an object: world content (blob or generated) or in-memory data."""

    size: int
    md5: str
    content: Content | None = None
    data: bytes | None = None

    @classmethod
    def from_content_json(cls, obj: JSON) -> Body:
        c = Content.from_json(obj)
        return cls(size=c.size, md5=c.md5, content=c)

    @classmethod
    def from_bytes(cls, data: bytes) -> Body:
        return cls(size=len(data), md5=hashlib.md5(data).hexdigest(), data=data)

    @classmethod
    def generated(cls, key: str, size: int) -> Body:
        c = Content(size=size, md5=md5_of_generated(key, size), key=key)
        return cls(size=size, md5=c.md5, content=c)

    @classmethod
    def from_admin(cls, obj: Any) -> Body:
        """``{"key": k, "size": n}``, ``{"data": "<utf-8 text>"}`` or a world CONTENT object."""
        if not isinstance(obj, dict):
            raise ValueError("content must be an object")
        if "data" in obj:
            return cls.from_bytes(str(obj["data"]).encode())
        if "key" in obj:
            return cls.generated(str(obj["key"]), int(obj.get("size", 1024)))
        if "size" in obj and "md5" in obj:
            return cls.from_content_json(obj)
        raise ValueError("content needs 'data', or 'key' and 'size'")

    def iter(self, world_dir: Path, offset: int, length: int) -> Iterator[bytes]:
        length = max(0, min(length, self.size - offset))
        if length == 0:
            return
        if self.data is not None:
            step = 1 << 20
            view = memoryview(self.data)
            for pos in range(offset, offset + length, step):
                yield bytes(view[pos : min(pos + step, offset + length)])
            return
        assert self.content is not None
        yield from iter_range(world_dir, self.content, offset, length)


def make_zip(inner_name: str, seed: str, size: int = 4096) -> bytes:
    """A deterministic zip holding one file (stand-in for an .xls or an asset package)."""
    payload = b""
    counter = 0
    while len(payload) < size:
        payload += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        info = zipfile.ZipInfo(inner_name, date_time=(2020, 1, 1, 0, 0, 0))
        zf.writestr(info, payload[:size])
    return buf.getvalue()


@dataclass(slots=True)
class RouteStats:
    requests: int = 0
    bytes: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0  # requests received whose answer is not finished yet
    max_in_flight: int = 0  # the most at once since the last reset

    def enter(self) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        self.in_flight -= 1

    def to_json(self) -> JSON:
        return {
            "requests": self.requests,
            "bytes": self.bytes,
            "statuses": dict(self.statuses),
            "max_in_flight": self.max_in_flight,
        }


@dataclass(slots=True)
class Token:
    value: str
    expires: float  # epoch seconds
    subject: str = ""  # IAM: user name; EnOS: appKey


class World:
    """All emulator state. ``clock()`` returns epoch seconds (injectable for tests)."""

    def __init__(
        self,
        world_dir: Path,
        faults: FaultEngine,
        clock: Callable[[], float],
        link_base: str | None = None,
    ) -> None:
        self.dir = world_dir
        self.faults = faults
        self.clock = clock
        # KooDrive links of blob objects point at <link_base>/<blob path> (an external static
        # server holding the world dir) instead of the emulator's own OBS route
        self.link_base = link_base
        self.secret = secrets.token_bytes(32)  # signs presigned OBS URLs
        self.stats: dict[str, RouteStats] = {}
        # signatures of the presigned links handed out (GET /_admin/secrets: a leak test's list)
        self.presigned: collections.deque[str] = collections.deque(maxlen=10_000)
        self.load()

    # ---- loading -----------------------------------------------------------------------------

    def load(self) -> None:
        raw: JSON = json.loads((self.dir / "world.json").read_text(encoding="utf-8"))
        self.raw = raw
        self.credentials: JSON = raw.get("credentials", {})
        # EnOS
        self.orgs: dict[str, JSON] = {}
        self.enos_tokens: dict[str, Token] = {}
        self.enos_current: dict[str, Token] = {}  # appKey -> last issued token
        for org in raw.get("enos", {}).get("orgs", []):
            org = copy.deepcopy(org)
            org.setdefault("models", {})
            org.setdefault("products", [])
            org.setdefault("assets", [])
            org.setdefault("files", {})
            org.setdefault("firmwares", [])
            for f in org["files"].values():
                f["body"] = Body.from_content_json(f["content"])
            for fw in org["firmwares"]:
                fw["body"] = Body.from_content_json(fw["content"])
            self.orgs[org["orgId"]] = org
        # IAM
        self.iam_tokens: dict[str, Token] = {}
        # KooDrive
        self.containers: dict[str, JSON] = {}
        for c in raw.get("koodrive", {}).get("containers", []):
            c = copy.deepcopy(c)
            for e in c.get("entries", []):
                e["body"] = Body.from_content_json(e["content"]) if e.get("content") else None
            c["entries"] = {e["id"]: e for e in c.get("entries", [])}
            self.containers[c["containerId"]] = c
        self.obs_objects: dict[str, tuple[str, str, str]] = {}  # key -> (cid, fileId, md5)
        # IoTDA
        iot = raw.get("iotda", {})
        self.iotda_project: str = iot.get("projectId", "")
        self.iotda_instance: str = iot.get("instanceId", "")
        self.iotda_tasks: dict[str, JSON] = {}
        for t in iot.get("tasks", []):
            t = copy.deepcopy(t)
            t["body"] = Body.from_content_json(t["content"]) if t.get("content") else None
            self.iotda_tasks[t["export_task_id"]] = t
        self.iotda_last_download: dict[str, float] = {}
        self.iotda_counter = 0
        # ROMA
        roma = raw.get("roma", {})
        self.roma_project: str = roma.get("projectId", "")
        self.roma_instances: dict[str, dict[str, JSON]] = {}
        for inst in roma.get("instances", []):
            jobs: dict[str, JSON] = {}
            for j in inst.get("jobs", []):
                j = copy.deepcopy(j)
                j["body"] = Body.from_content_json(j["content"]) if j.get("content") else None
                j.setdefault("consumed", False)
                j.setdefault("user", None)
                jobs[j["job_id"]] = j
            self.roma_instances[inst["instanceId"]] = jobs
        # index lag: key -> (until, snapshot)
        self.stale: dict[tuple[str, ...], tuple[float, Any]] = {}
        log.info(
            "world loaded from %s: %d orgs, %d containers",
            self.dir,
            len(self.orgs),
            len(self.containers),
        )

    # ---- index lag ---------------------------------------------------------------------------

    def mark_changed(self, key: tuple[str, ...], snapshot: Any) -> None:
        """Record the pre-change ``snapshot`` of ``key`` (listings keep it for index_lag s)."""
        lag = float(self.faults.plan.index_lag)
        if lag <= 0:
            return
        now = self.clock()
        old = self.stale.get(key)
        keep = old[1] if old is not None and old[0] > now else snapshot
        self.stale[key] = (now + lag, keep)

    def listed(self, key: tuple[str, ...], current: Any) -> Any:
        """What a listing/search shows for ``key``: the stale snapshot during the lag."""
        old = self.stale.get(key)
        if old is None:
            return current
        if old[0] > self.clock():
            return old[1]
        del self.stale[key]
        return current

    # ---- stats -------------------------------------------------------------------------------

    def route_stats(self, route: str) -> RouteStats:
        st = self.stats.get(route)
        if st is None:
            st = self.stats[route] = RouteStats()
        return st


def file_snapshot(f: JSON) -> JSON:
    """A shallow copy of a file/entry record (its ``body`` is immutable)."""
    return dict(f)
