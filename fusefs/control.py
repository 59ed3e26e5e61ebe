"""The control socket: operator commands for a running mount (`fusefs cache|info|prefetch|pin`).

The mount is read-only, so setxattr cannot carry commands (s3ql's way); instead the daemon
listens on a unix socket (mode 0600). Its path follows from the mountpoint and the daemon's uid
alone (``control_path``), so a client needs no xattr to find it: it looks the mount up in
/proc/self/mountinfo (type ``fuse.fusefs``, ``user_id=`` names the daemon's uid) and derives the
path. One request per connection: a JSON line ``{"op": ..., ...}``; the answer is a stream of
JSON lines, the last of which is ``{"end": true}`` (or ``"error": "..."``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from fusefs import errors
from fusefs.providers.base import EntryKind, ProviderError
from fusefs.vfs.tree import ROOT_INO

if TYPE_CHECKING:
    from fusefs.cache.block_cache import BlockCache, CachedObject
    from fusefs.providers.base import Provider
    from fusefs.vfs.background import BackgroundFetcher
    from fusefs.vfs.tree import Node, VirtualTree

log = logging.getLogger(__name__)

XATTR = "user.fusefs.control"  # also published on the mount root when mount.xattrs is on
FSTYPE = "fuse.fusefs"
_MAX_REQUEST = 1 << 20


def runtime_dirs(uid: int) -> list[Path]:
    """Where the daemon of ``uid`` may keep its sockets, in the order it tries them."""
    if uid == 0:
        return [Path("/run/fusefs"), Path("/tmp/fusefs-0")]
    return [Path(f"/run/user/{uid}/fusefs"), Path(f"/tmp/fusefs-{uid}")]


def _socket_name(mountpoint: Path) -> str:
    tag = hashlib.sha256(os.fsencode(mountpoint)).hexdigest()[:16]
    return f"control-{tag}.sock"


def _private_dir(path: Path, uid: int) -> bool:
    """Create ``path`` (mode 0700) or accept it if it is ours and private; never follow a link."""
    if not path.parent.is_dir():
        return False
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o077


def control_path(mountpoint: Path, uid: int | None = None) -> Path | None:
    """The control socket of the daemon that mounts ``mountpoint`` as ``uid``.

    /run/fusefs for root, else /run/user/<uid>/fusefs where the user has a runtime dir, else
    /tmp/fusefs-<uid>: a private directory, then one name per mountpoint, hashed from its real
    path (the one mountinfo shows). None: no usable directory.
    """
    uid = os.getuid() if uid is None else uid
    real = Path(os.path.realpath(mountpoint))
    for d in runtime_dirs(uid):
        if _private_dir(d, uid):
            return d / _socket_name(real)
    return None


class RecentWarnings(logging.Handler):
    """The last ``n`` warning (and worse) lines of the daemon's log, for `fusefs status`."""

    def __init__(self, n: int = 10) -> None:
        super().__init__(logging.WARNING)
        self.lines: deque[dict[str, Any]] = deque(maxlen=n)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a bad format string must not break logging
            text = str(record.msg)
        self.lines.append(
            {"time": record.created, "level": record.levelname, "message": text[:500]}
        )


@dataclass
class DaemonState:
    """What the daemon knows beyond the tree and the cache, for the "status" request."""

    mountpoint: Path
    providers: list[Provider] = field(default_factory=list)
    # start check of each provider: None (authenticated) or the error text; absent: offline
    start_checks: dict[str, str | None] = field(default_factory=dict)
    recent: RecentWarnings | None = None
    started_at: float = field(default_factory=time.time)
    offline: bool = False
    metrics: str | None = None  # the metrics URL when they are served


def _provider_status(p: Provider, tree: VirtualTree, state: DaemonState) -> dict[str, Any]:
    """Reachable or not (start check, then listings), token expiry and download queue."""
    out: dict[str, Any] = {"name": p.name, "state": "up", "error": None, "since": None}
    out["start_check"] = state.start_checks.get(p.name, "skipped" if state.offline else None)
    down = getattr(p, "error", None)  # mount.DownAtStart: credentials rejected at start
    failed = tree.listing_errors.get(p.name)
    if state.offline:
        out["state"] = "offline"
    elif isinstance(down, ProviderError):
        out.update(state="down", error=str(down), since=state.started_at)
    elif failed is not None:
        out.update(state="unreachable", error=failed[1], since=failed[0])
    expiry = getattr(p, "token_expiry", None)  # wall clock, where the provider knows it
    if callable(expiry):
        try:
            out["token_expires"] = expiry()
        except Exception:  # a status never fails for one figure
            log.debug("%s: token expiry unknown", p.name, exc_info=True)
    turns = getattr(p, "turns", None)  # providers/window.py: one download per window (IoTDA)
    if turns is not None and hasattr(turns, "queue"):
        waiting = list(turns.queue())
        out["queue"] = {
            "holder": getattr(turns, "holder", None),
            "waiting": len(waiting),
            "interval": getattr(turns, "interval", None),
            "next": waiting[:5],
            "eta_last": round(turns.eta(len(waiting) - 1), 1) if waiting else 0.0,
        }
    return out


class ControlServer:
    def __init__(
        self,
        tree: VirtualTree,
        cache: BlockCache,
        path: Path | None,
        background: BackgroundFetcher | None = None,
        state: DaemonState | None = None,
    ) -> None:
        self.tree = tree
        self.cache = cache
        self.path = path
        self.background = background
        self.state = state

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.path is None:
            dirs = " or ".join(str(d) for d in runtime_dirs(os.getuid()))
            log.warning("no private directory for the control socket (%s): no commands", dirs)
            task_status.started()
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a daemon that crashed; this mountpoint is ours now
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        try:
            await sock.bind(str(self.path))
            os.chmod(self.path, 0o600)
        except OSError as exc:
            sock.close()
            log.warning("cannot serve the control socket %s: %s; no commands", self.path, exc)
            self.path = None
            task_status.started()
            return
        sock.listen(16)
        listener = trio.SocketListener(sock)
        log.debug("control socket %s", self.path)
        task_status.started()
        try:
            await trio.serve_listeners(self._serve, [listener])
        finally:
            with contextlib.suppress(OSError):
                self.path.unlink()

    async def _serve(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                request = await _read_line(stream)
                async for reply in self._dispatch(request):
                    await stream.send_all(json.dumps(reply).encode() + b"\n")
                await stream.send_all(b'{"end": true}\n')
            except (errors.FsError, errors.During, ProviderError, ValueError, KeyError) as exc:
                # a failure of the file system reads as it would through the mount
                failure = errors.fs_error_for(exc) or exc
                log.warning("control request failed: %s", failure)
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(json.dumps({"error": str(failure)}).encode() + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                log.info("control client went away")
            except Exception:
                log.exception("control request crashed")

    async def _dispatch(self, req: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        op = req.get("op")
        if op == "stats":
            yield self.stats()
        elif op == "status":
            yield self.status()
        elif op == "verify":
            checked, bad = await trio.to_thread.run_sync(self.cache.store.find_corrupt)
            for oid, index in bad:
                log.warning("cache verify: block %d of object %s is corrupt; dropped", index, oid)
                self.cache.drop_block(oid, index)
            yield {"checked": checked, "bad": len(bad)}
        elif op == "clear":
            freed = 0
            if req.get("paths"):
                async for obj, _path in self._objects(req["paths"]):
                    if not obj.pinned:  # pinned and one-shot data are kept: `unpin` first
                        freed += await self.cache.drop_object(obj)
            else:
                freed = self.cache.store.clear_unpinned()
                self.cache.forget_memory()
            yield {"freed": freed}
        elif op == "info":
            for rel in req["paths"]:
                yield await self.info(rel)
        elif op in ("prefetch", "pin"):
            async for progress in self._warm(req["paths"], pin=op == "pin"):
                yield progress
        elif op == "unpin":
            n = 0
            async for obj, _path in self._objects(req["paths"]):
                self.cache.set_pinned(obj, False)
                n += 1
            yield {"unpinned": n}
        else:
            raise ValueError(f"unknown control op {op!r}")

    def stats(self) -> dict[str, Any]:
        s = self.cache.statistics()
        looked = s["hits"] + s["misses"]
        return {
            **s,
            "hit_rate": round(s["hits"] / looked, 4) if looked else None,
            "objects": self.cache.store.object_count(),
            "inodes": len(self.tree.nodes),
        }

    def status(self) -> dict[str, Any]:
        """`fusefs status`: providers, cache, downloads, rate-limited queues, last warnings."""
        state = self.state
        if state is None:
            raise ValueError("this daemon keeps no status")
        s = self.stats()
        downloads = s.get("inflight_budget_used", 0) // max(1, self.cache.block_size)
        return {
            "mountpoint": str(state.mountpoint),
            "pid": os.getpid(),
            "started_at": state.started_at,
            "now": time.time(),
            "offline": state.offline,
            "metrics": state.metrics,
            "providers": [_provider_status(p, self.tree, state) for p in state.providers],
            "cache": {
                k: s.get(k)
                for k in (
                    "unpinned_bytes",
                    "pinned_bytes",
                    "max_bytes",
                    "hits",
                    "misses",
                    "hit_rate",
                    "fetched_bytes",
                    "evicted_blocks",
                    "objects",
                )
            },
            "downloads_in_flight": downloads,
            "inodes": s["inodes"],
            "last_errors": list(state.recent.lines) if state.recent is not None else [],
        }

    async def info(self, rel: str) -> dict[str, Any]:
        """One path's state (the user.fusefs.* xattrs, typed); ``failed`` if it is not there."""
        try:
            node = await self._resolve(rel)
        except (errors.FsError, errors.During) as exc:
            return {"path": rel, "failed": str(errors.fs_error_for(exc))}
        out: dict[str, Any] = {"path": rel, "kind": node.kind.value, "size": node.size}
        out.update(self.tree.state(node))
        if node.ino == ROOT_INO and self.path is not None:
            out["control"] = str(self.path)
        return out

    async def _resolve(self, rel: str) -> Node:
        node = self.tree.node(ROOT_INO)
        for part in Path(rel).parts:
            if part in ("/", "."):
                continue
            node = await self.tree.lookup(node.ino, part)
        return node

    async def _files(self, node: Node, path: str) -> AsyncIterator[tuple[Node, str]]:
        if node.kind is EntryKind.FILE:
            yield node, path
            return
        for name, child in await self.tree.readdir(node.ino):
            async for item in self._files(child, f"{path}/{name}"):
                yield item

    async def _objects(self, paths: list[str]) -> AsyncIterator[tuple[CachedObject, str]]:
        for rel in paths:
            root = await self._resolve(rel)
            async for node, path in self._files(root, rel.rstrip("/")):
                assert node.provider is not None
                yield self.cache.object(node.provider, self.tree.ref(node)), path

    async def _warm(self, paths: list[str], *, pin: bool) -> AsyncIterator[dict[str, Any]]:
        files: list[tuple[Node, str]] = []
        for rel in paths:
            root = await self._resolve(rel)
            async for item in self._files(root, rel.rstrip("/")):
                files.append(item)
        for n, _ in files:
            self.tree.refresh_size(n)
        total = sum(n.size or 0 for n, _ in files)
        if pin:
            store = self.cache.store
            if store.pinned_bytes + total > store.max_bytes:
                raise ValueError(
                    f"pinning {total} bytes would exceed the cache cap "
                    f"({store.pinned_bytes} of {store.max_bytes} bytes already pinned)"
                )
        # sizes unknown and one download per window (IoTDA): these wait in the provider's
        # queue, one per window; shown first with when each turn should come
        queued = [(n, p) for n, p in files if n.size is None and self.tree.lazy_size(n)]
        head: dict[str, Any] = {"files": len(files), "total": total}
        if queued:
            head["queue"] = self._queue(queued)
        yield head
        rest = [(n, p) for n, p in files if not (n.size is None and self.tree.lazy_size(n))]
        files_done = 0
        done = 0
        if queued and self.background is not None:
            self.background.request([n for n, _ in queued])  # the background takes them first
        for i, (node, path) in enumerate(queued):
            assert node.provider is not None
            ref = self.tree.ref(node)
            obj = self.cache.object(node.provider, ref)
            try:
                if pin:
                    self.cache.set_pinned(obj, True)
                size = await self.cache.wait_whole(obj)  # after readers, as the background
            except ProviderError as exc:
                raise errors.During(f"fetching {path}") from exc
            self.tree.learn_size(node, ref, size)
            files_done += 1
            done += size
            turns = self.tree.turns(node)
            left = len(queued) - i - 1
            yield {
                "file": path,
                "files_done": files_done,
                "done": done,
                "total": total + done,
                "eta": round(turns.eta(left - 1), 1) if turns is not None and left else 0.0,
            }
        total += done
        for node, path in rest:
            assert node.provider is not None
            try:
                await self.tree.resolve_size(node)
                obj = self.cache.object(node.provider, self.tree.ref(node))
                if pin:
                    self.cache.set_pinned(obj, True)
                await self.cache.fetch_all(obj)
            except ProviderError as exc:
                raise errors.During(f"fetching {path}") from exc
            files_done += 1
            done += node.size or 0
            yield {"file": path, "files_done": files_done, "done": done, "total": total}

    def _queue(self, queued: list[tuple[Node, str]]) -> list[dict[str, Any]]:
        """Each file's expected turn in its provider's download queue, in seconds from now:
        after the downloads readers and others wait for, one window each (an estimate: a
        reader that comes later goes first)."""
        out: list[dict[str, Any]] = []
        position: dict[int, int] = {}  # per queue: turns before the next of ours
        for node, path in queued:
            turns = self.tree.turns(node)
            if turns is None:  # offline: there is no queue, the download fails at once
                out.append({"file": path, "eta": None})
                continue
            if id(turns) not in position:
                ours = {n.key for n, _ in queued if n.provider is node.provider}
                position[id(turns)] = sum(1 for k in turns.queue() if k not in ours)
            eta = turns.eta(position[id(turns)])
            position[id(turns)] += 1
            out.append({"file": path, "eta": round(eta, 1), "interval": turns.interval})
        return out


async def _read_line(stream: trio.SocketStream) -> dict[str, Any]:
    buf = b""
    while b"\n" not in buf:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > _MAX_REQUEST:
            raise ValueError("control request too large")
    obj = json.loads(buf.split(b"\n", 1)[0] or b"{}")
    if not isinstance(obj, dict):
        raise ValueError("control request must be a JSON object")
    return obj


# -- client side (the CLI), plain blocking sockets ----------------------------------------------
@dataclass(frozen=True)
class MountInfo:
    """A fusefs mount as /proc/self/mountinfo shows it."""

    mountpoint: Path
    uid: int  # the daemon's (user_id= of the FUSE mount)

    def socket_path(self) -> Path:
        """The daemon's control socket (``control_path`` as the daemon chose it)."""
        name = _socket_name(self.mountpoint)
        dirs = runtime_dirs(self.uid)
        for d in dirs:
            candidate = d / name
            try:
                st = os.lstat(candidate)
            except OSError:
                continue
            if stat.S_ISSOCK(st.st_mode) and st.st_uid == self.uid:
                return candidate
        looked = ", ".join(str(d / name) for d in dirs)
        raise ValueError(
            f"no control socket for {self.mountpoint} (looked for {looked}): is its daemon "
            "running as this user? See its log"
        )


def _unescape(field: bytes) -> bytes:
    """mountinfo writes space, tab, newline and backslash as \\ooo (octal)."""
    if b"\\" not in field:
        return field
    out = bytearray()
    i = 0
    while i < len(field):
        if field[i : i + 1] == b"\\" and field[i + 1 : i + 4].isdigit():
            out.append(int(field[i + 1 : i + 4], 8))
            i += 4
        else:
            out += field[i : i + 1]
            i += 1
    return bytes(out)


def mount_table() -> list[tuple[bytes, bytes, bytes]]:
    """(mount point, fstype, super options) of every mount, in mount order."""
    with open("/proc/self/mountinfo", "rb") as f:
        lines = f.read().splitlines()
    out = []
    for line in lines:
        fields = line.split(b" ")
        try:
            sep = fields.index(b"-", 6)
            out.append((_unescape(fields[4]), fields[sep + 1], fields[sep + 3]))
        except (ValueError, IndexError):
            continue
    return out


def find_mount(
    path: Path, table: list[tuple[bytes, bytes, bytes]] | None = None
) -> tuple[MountInfo, str]:
    """The fusefs mount containing ``path`` and the path relative to its root."""
    real = os.fsencode(os.path.realpath(path))
    best: tuple[bytes, bytes, bytes] | None = None
    for mp, fstype, opts in mount_table() if table is None else table:
        inside = real == mp or real.startswith(mp.rstrip(b"/") + b"/")
        if inside and (best is None or len(mp) >= len(best[0])):  # later mounts cover earlier
            best = (mp, fstype, opts)
    if best is None or best[1] != FSTYPE.encode():
        raise ValueError(f"{path} is not inside a fusefs mount")
    mp, _, opts = best
    uid = os.getuid()
    for opt in opts.split(b","):
        if opt.startswith(b"user_id="):
            uid = int(opt[len(b"user_id=") :])
    mountpoint = Path(os.fsdecode(mp))
    return MountInfo(mountpoint, uid), os.fsdecode(os.path.relpath(real, mp))


def request(mount: MountInfo, req: dict[str, Any]) -> Iterator[dict[str, Any]]:
    import socket

    path = mount.socket_path()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            raise ValueError(
                f"the daemon of {mount.mountpoint} does not answer on {path}: if the mount is "
                f"dead (ENOTCONN), run `fusefs unmount {mount.mountpoint}`"
            ) from None
        except PermissionError:
            raise ValueError(
                f"the control socket {path} belongs to uid {mount.uid}: run this as that user "
                "(or root)"
            ) from None
        s.sendall(json.dumps(req).encode() + b"\n")
        with s.makefile("rb") as f:
            for line in f:
                reply = json.loads(line)
                if "error" in reply:
                    raise ValueError(reply["error"])
                if reply.get("end"):
                    return
                yield reply
    raise ValueError("the daemon closed the control connection early")
