"""The control socket: operator commands for a running mount (`fusefs cache|prefetch|pin|unpin`).

The mount is read-only, so setxattr cannot carry commands (s3ql's way); instead the daemon
listens on a unix socket (mode 0600) whose path it publishes as the xattr ``user.fusefs.control``
of the mount root. One request per connection: a JSON line ``{"op": ..., ...}``; the answer is a
stream of JSON lines, the last of which is ``{"end": true}`` (or ``"error": "..."``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from fusefs import errors
from fusefs.providers.base import EntryKind, ProviderError
from fusefs.vfs.tree import ROOT_INO, to_fs_error

if TYPE_CHECKING:
    from fusefs.cache.block_cache import BlockCache, CachedObject
    from fusefs.vfs.tree import Node, VirtualTree

log = logging.getLogger(__name__)

XATTR = "user.fusefs.control"
_MAX_REQUEST = 1 << 20


class ControlServer:
    def __init__(self, tree: VirtualTree, cache: BlockCache, path: Path) -> None:
        self.tree = tree
        self.cache = cache
        self.path = path

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await sock.bind(str(self.path))
        os.chmod(self.path, 0o600)
        sock.listen(16)
        listener = trio.SocketListener(sock)
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
            except (errors.FsError, ProviderError, ValueError, KeyError) as exc:
                log.warning("control request failed: %s", exc)
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(json.dumps({"error": str(exc)}).encode() + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                log.info("control client went away")
            except Exception:
                log.exception("control request crashed")

    async def _dispatch(self, req: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        op = req.get("op")
        if op == "stats":
            yield self.stats()
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
        total = sum(n.size or 0 for n, _ in files)
        if pin:
            store = self.cache.store
            if store.pinned_bytes + total > store.max_bytes:
                raise ValueError(
                    f"pinning {total} bytes would exceed the cache cap "
                    f"({store.pinned_bytes} of {store.max_bytes} bytes already pinned)"
                )
        yield {"files": len(files), "total": total}
        done = 0
        for node, path in files:
            assert node.provider is not None
            try:
                await self.tree.resolve_size(node)
                obj = self.cache.object(node.provider, self.tree.ref(node))
                if pin:
                    self.cache.set_pinned(obj, True)
                await self.cache.fetch_all(obj)
            except ProviderError as exc:
                raise to_fs_error(exc, f"fetching {path}") from exc
            done += node.size or 0
            yield {"file": path, "done": done, "total": total}


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
def find_mount(path: Path) -> tuple[Path, str]:
    """The mountpoint containing ``path`` and the path relative to it."""
    p = path.absolute()
    probe = p
    while not os.path.ismount(probe):
        if probe.parent == probe:
            raise ValueError(f"{path} is not inside a mount")
        probe = probe.parent
    return probe, os.path.relpath(p, probe)


def control_socket(mountpoint: Path) -> str:
    try:
        return os.getxattr(mountpoint, XATTR).decode()
    except OSError as exc:
        raise ValueError(f"{mountpoint} is not a fusefs mount ({exc.strerror})") from None


def request(mountpoint: Path, req: dict[str, Any]) -> Iterator[dict[str, Any]]:
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(control_socket(mountpoint))
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
