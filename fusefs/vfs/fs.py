"""The filesystem as the FUSE adapter sees it: one call per request, plain answers, the handles.

``fuse_ops.py`` turns pyfuse3's arguments into these calls and their answers into pyfuse3's
structures, and nothing else (as mountpoint-s3's ``fs.rs`` owns the handles and its ``fuse.rs``
only replies). The answers are ``Node``s (the adapter reads ``ino``, ``is_dir``, ``size``,
``mtime_ns`` and ``ctime_ns``, and keeps its attributes object in ``adapter_attrs``), ints,
strings and the small records below. Failures are raised as they are: an ``FsError`` for what
is decided here, a provider's failure wrapped in ``errors.During`` (what was being done); the
adapter's boundary turns both into errnos with ``errors.fs_error_for``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fusefs import errors
from fusefs.cache.reader import FileReader
from fusefs.providers.base import ObjectNotFound, ProviderError, VersionMismatch
from fusefs.vfs.sequence import FolderReadAhead
from fusefs.vfs.tree import ROOT_INO, Node, StateValue, VirtualTree

if TYPE_CHECKING:
    from pathlib import Path

    from fusefs.cache.block_cache import BlockCache

XATTR_PREFIX = "user.fusefs."  # the state `fusefs info` prints (VirtualTree.state), as xattrs
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT

# readdir's reply for one entry: (name, node, the offset of the entry after it) -> False when
# the kernel's buffer is full (the entry was not taken)
Replier = Callable[[str, Node, int], bool]


@dataclass(frozen=True, slots=True)
class Opened:
    fh: int
    keep_cache: bool  # the version is the one the last open saw: the page cache stays valid


@dataclass(frozen=True, slots=True)
class Usage:
    """What ``df`` shows: the cache, as if it were the disk of the mount."""

    block_size: int
    capacity_bytes: int  # the cap (max_size) plus the pinned bytes, which it does not count
    used_bytes: int  # in the cache, pinned or not
    free_bytes: int  # what the cap leaves
    inodes: int  # known now


def _xattr_text(value: StateValue) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


class _DirHandle:
    __slots__ = ("entries", "ino")

    def __init__(self, ino: int) -> None:
        self.ino = ino
        self.entries: Sequence[tuple[str, Node]] | None = None


class Filesystem:
    """The operations of a read-only mount over a ``VirtualTree`` and its ``BlockCache``."""

    def __init__(
        self, tree: VirtualTree, cache: BlockCache, *, control_path: Path | None = None
    ) -> None:
        self.tree = tree
        self.cache = cache
        self.block_size = cache.block_size
        self.control_path = control_path  # published as user.fusefs.control on the root
        self._next_fh = 1  # one counter for file and directory handles
        self._files: dict[int, tuple[Node, FileReader]] = {}
        self._dirs: dict[int, _DirHandle] = {}
        self.read_ahead = FolderReadAhead(tree, cache)  # across the files of a folder

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    # -- entries -----------------------------------------------------------------------------
    def attr_timeout(self, node: Node) -> float:
        """How long the kernel may keep the entry and its attributes: an unknown size (shown
        as 0) must not be trusted, so it asks again on the next stat."""
        return 0.0 if node.size is None else self.tree.dir_ttl

    async def lookup(self, parent: int, name: str) -> Node:
        """The entry ``name`` of directory ``parent``; the kernel holds one more lookup of it."""
        node = await self.tree.lookup(parent, name)
        await self.tree.resolve_size(node)
        self.tree.remember(node)
        return node

    async def getattr(self, ino: int) -> Node:
        node = await self.tree.getattr(ino)
        await self.tree.resolve_size(node)
        return node

    def forget(self, items: Sequence[tuple[int, int]]) -> None:
        """The kernel dropped ``n`` lookups of each ``(ino, n)``."""
        self.tree.forget(items)

    def access(self, ino: int, mode: int) -> None:
        if mode & os.W_OK:
            raise errors.ReadOnly("write access on a read-only mount")
        self.tree.node(ino)

    # -- directories -------------------------------------------------------------------------
    def opendir(self, ino: int) -> int:
        node = self.tree.node(ino)
        if not node.is_dir:
            raise errors.NotADirectory(self.tree.describe(node))
        fh = self._new_fh()
        self._dirs[fh] = _DirHandle(ino)
        return fh

    async def readdir(self, fh: int, start: int, reply: Replier) -> None:
        """Entries from offset ``start`` on, each handed to ``reply`` until it says the buffer
        is full; a lookup of each entry taken is remembered (READDIRPLUS)."""
        handle = self._dirs.get(fh)
        if handle is None:
            raise errors.BadHandle(f"directory handle {fh}")
        if handle.entries is None or start == 0:
            # one snapshot per handle: continuation offsets stay valid while the listing changes
            handle.entries = await self.tree.readdir(handle.ino)
        entries = handle.entries
        # the per-entry loop of every `ls -l`: names bound once
        nodes, remember = self.tree.nodes, self.tree.remember
        for i in range(start, len(entries)):
            name, child = entries[i]
            if child.ino not in nodes:  # dropped since the snapshot: the kernel must not get it
                continue
            if not reply(name, child, i + 1):
                return
            remember(child)

    def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # -- files -------------------------------------------------------------------------------
    async def open(self, ino: int, flags: int, keep_alive: Callable[[float], None]) -> Opened:
        """A handle on the version listed now. An object whose size is unknown is downloaded
        whole first; while that waits in its provider's line, ``keep_alive(extra)`` is called
        on every move of the line (the request's time limit restarts)."""
        if flags & _WRITE_FLAGS:
            raise errors.ReadOnly("open for writing on a read-only mount")
        tree = self.tree
        node = await tree.getattr(ino)
        if node.is_dir:
            raise errors.IsADirectory(tree.describe(node))
        await tree.resolve_size(node)
        if node.size is None:  # one download per window (IoTDA): wait for it, in line
            await tree.download_for_reader(node, keep_alive)
        assert node.provider is not None
        ref = tree.ref(node)
        obj = self.cache.object(node.provider, ref)
        if obj.size is None:
            obj.size = node.size
        keep = node.version_seen == ref.version
        node.version_seen = ref.version
        fh = self._new_fh()
        self._files[fh] = (node, FileReader(self.cache, obj))
        self.read_ahead.opened(node)
        return Opened(fh, keep)

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        """Up to ``size`` bytes at ``off`` of the handle's version (no copy: a view of a block
        where one block holds them all).

        When the service no longer has the version or reports another size: ESTALE if bytes of
        it had been received before (it changed while open), else ENOENT (gone) or EIO (the
        first answer already disagrees with the listing)."""
        try:
            node, reader = self._files[fh]
        except KeyError:
            raise errors.BadHandle(f"file handle {fh}") from None
        try:
            return await reader.read(off, size)
        except (ObjectNotFound, VersionMismatch) as exc:
            what = f"reading {self.tree.describe(node)} at {off}"
            if self.cache.had_bytes(reader.obj):  # served as listed before: it changed since
                raise errors.Stale(f"{what}: {exc} (changed while open)") from exc
            if isinstance(exc, ObjectNotFound):  # gone before a byte of it was read: ENOENT
                raise errors.During(what) from exc
            # the first answer already disagrees with the listing: nothing changed while open
            raise errors.RemoteError(
                f"{what}: {exc} (before any byte of it was read: the listing is out of date or "
                "the service is inconsistent)"
            ) from exc
        except ProviderError as exc:
            raise errors.During(f"reading {self.tree.describe(node)} at {off}") from exc

    def release(self, fh: int) -> None:
        """The handle is closed: its read-ahead that no other reader waits for stops."""
        entry = self._files.pop(fh, None)
        if entry is not None:
            entry[1].close()

    # -- extended attributes -----------------------------------------------------------------
    def xattrs(self, ino: int) -> dict[str, str]:
        """Full xattr name -> value: what `fusefs info` prints; the root has the control
        socket's path."""
        node = self.tree.node(ino)
        if node.ino == ROOT_INO and self.control_path is not None:
            return {XATTR_PREFIX + "control": str(self.control_path)}
        return {XATTR_PREFIX + k: _xattr_text(v) for k, v in self.tree.state(node).items()}

    def getxattr(self, ino: int, name: str) -> str:
        value = self.xattrs(ino).get(name)
        if value is None:
            raise errors.NoAttribute(name)
        return value

    # -- the file system ---------------------------------------------------------------------
    def usage(self) -> Usage:
        store = self.cache.store
        unpinned, pinned = store.unpinned_bytes, store.pinned_bytes
        free = max(0, store.max_bytes - unpinned)
        return Usage(
            self.block_size,
            capacity_bytes=max(store.max_bytes, unpinned) + pinned,
            used_bytes=unpinned + pinned,
            free_bytes=free,
            inodes=len(self.tree.nodes),
        )


__all__ = ["ROOT_INO", "XATTR_PREFIX", "Filesystem", "Node", "Opened", "Replier", "Usage"]
