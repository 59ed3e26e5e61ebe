"""The thin FUSE adapter: bytes <-> str, Node -> EntryAttributes, and the one errno boundary.

Only this module and ``mount.py`` import pyfuse3. Every handler runs under ``errno_boundary``:
a time limit (``request_timeout``), FsError -> its errno, anything unexpected -> EIO + a log
line. Nothing here may let an exception escape to pyfuse3, which would end the mount.
"""

from __future__ import annotations

import contextvars
import errno
import functools
import logging
import os
import stat
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

import pyfuse3
import trio

from fusefs import errors
from fusefs.cache.reader import FileReader
from fusefs.providers.base import EntryKind, ObjectNotFound, ProviderError, VersionMismatch
from fusefs.vfs.sequence import FolderReadAhead
from fusefs.vfs.tree import ROOT_INO, Node, StateValue, VirtualTree, to_fs_error

if TYPE_CHECKING:
    from pathlib import Path

    from fusefs.cache.block_cache import BlockCache

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
_XATTR_PREFIX = "user.fusefs."
_XATTR_PREFIX_B = _XATTR_PREFIX.encode()


def _xattr_text(value: StateValue) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


# the time limit of the FUSE request being handled: a request waiting in line for a download
# turn moves it on (FuseOperations._keep_alive)
_REQUEST_SCOPE: contextvars.ContextVar[trio.CancelScope | None] = contextvars.ContextVar(
    "fusefs_request_scope", default=None
)


def errno_boundary(
    fn: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    @functools.wraps(fn)
    async def handler(*args: P.args, **kwargs: P.kwargs) -> T:
        self = args[0]
        assert isinstance(self, FuseOperations)
        try:
            with trio.fail_after(self.request_timeout) as scope:
                token = _REQUEST_SCOPE.set(scope)
                try:
                    return await fn(*args, **kwargs)
                finally:
                    _REQUEST_SCOPE.reset(token)
        except pyfuse3.FUSEError:
            raise
        except errors.FsError as exc:
            log.log(exc.log_level, "%s%r failed: %s", fn.__name__, args[1:3], exc)
            raise pyfuse3.FUSEError(exc.errno) from None
        except ProviderError as exc:  # a provider error that skipped the vfs conversion
            fs_exc = to_fs_error(exc, fn.__name__)
            log.log(fs_exc.log_level, "%s%r failed: %s", fn.__name__, args[1:3], fs_exc)
            raise pyfuse3.FUSEError(fs_exc.errno) from None
        except trio.TooSlowError:
            log.warning(
                "%s%r did not finish within request_timeout=%ss; answering EIO",
                fn.__name__,
                args[1:3],
                self.request_timeout,
            )
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:  # never BaseException: trio.Cancelled must propagate
            log.exception("%s%r: unexpected error", fn.__name__, args[1:3])
            raise pyfuse3.FUSEError(errno.EIO) from None

    return handler


class _DirHandle:
    __slots__ = ("entries", "ino")

    def __init__(self, ino: int) -> None:
        self.ino = ino
        self.entries: Sequence[tuple[str, Node]] | None = None


class FuseOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        tree: VirtualTree,
        cache: BlockCache,
        *,
        request_timeout: float,
        control_path: Path | None = None,
        xattrs: bool = False,
    ) -> None:
        super().__init__()
        self.control_path = control_path
        # ENOSYS makes the kernel stop sending getxattr (listxattr) for good, answering
        # EOPNOTSUPP itself: `ls -l` then costs no round trip per entry (docs/cache.md)
        self.xattrs = xattrs
        self._no_xattr_errno = errno.ENODATA if xattrs else errno.ENOSYS
        self.tree = tree
        self.cache = cache
        self.request_timeout = request_timeout
        self.uid = os.getuid()
        self.gid = os.getgid()
        self._next_fh = 1
        self._files: dict[int, tuple[Node, FileReader]] = {}
        self._dirs: dict[int, _DirHandle] = {}
        self.read_ahead = FolderReadAhead(tree, cache)  # across the files of a folder

    # -- attributes ------------------------------------------------------------------------
    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        # built once per node and version of its attributes: a warm `ls -l` of 10,000 entries
        # answers them all again on every pass (READDIRPLUS), pyfuse3 only reads the object
        c = node.adapter_attrs
        if c is not None and c[0] == node.size and c[1] == node.mtime_ns and c[2] == node.ctime_ns:
            return cast("pyfuse3.EntryAttributes", c[3])
        a = self._new_attrs(node)
        node.adapter_attrs = (node.size, node.mtime_ns, node.ctime_ns, a)
        return a

    def _new_attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        if node.kind is EntryKind.DIR:
            a.st_mode = stat.S_IFDIR | 0o555
            a.st_nlink = 2
            a.st_size = 0
        else:
            a.st_mode = stat.S_IFREG | 0o444
            a.st_nlink = 1
            a.st_size = node.size or 0
        a.st_blksize = self.cache.block_size
        a.st_blocks = (a.st_size + 511) // 512
        a.st_uid = self.uid
        a.st_gid = self.gid
        a.st_atime_ns = node.mtime_ns
        a.st_mtime_ns = node.mtime_ns
        a.st_ctime_ns = node.ctime_ns or node.mtime_ns
        # an unknown size must not be trusted by the kernel: ask again on the next stat
        timeout = 0.0 if node.size is None else self.tree.dir_ttl
        a.entry_timeout = timeout
        a.attr_timeout = timeout
        return a

    # -- lookups -----------------------------------------------------------------------------
    @errno_boundary
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = await self.tree.lookup(parent_inode, os.fsdecode(name))
        await self.tree.resolve_size(node)
        self.tree.remember(node)
        return self._attrs(node)

    @errno_boundary
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = await self.tree.getattr(inode)
        await self.tree.resolve_size(node)
        return self._attrs(node)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        try:
            self.tree.forget(inode_list)
        except Exception:
            log.exception("forget failed")

    @errno_boundary
    async def setattr(
        self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise errors.ReadOnly("setattr on a read-only mount")

    # -- directories -------------------------------------------------------------------------
    @errno_boundary
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self.tree.node(inode)
        if not node.is_dir:
            raise errors.NotADirectory(self.tree.describe(node))
        fh = self._next_fh
        self._next_fh += 1
        self._dirs[fh] = _DirHandle(inode)
        return fh

    @errno_boundary
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self._dirs.get(fh)
        if handle is None:
            raise errors.BadHandle(f"directory handle {fh}")
        if handle.entries is None or start_id == 0:
            # one snapshot per handle: continuation ids stay valid while the listing changes
            handle.entries = await self.tree.readdir(handle.ino)
        entries = handle.entries
        # the per-entry loop of every `ls -l` (READDIRPLUS): names bound once, attrs cached
        nodes, attrs, remember, reply = (
            self.tree.nodes,
            self._attrs,
            self.tree.remember,
            pyfuse3.readdir_reply,
        )
        for i in range(start_id, len(entries)):
            name, child = entries[i]
            if child.ino not in nodes:
                continue
            if not reply(token, os.fsencode(name), attrs(child), i + 1):
                return
            remember(child)

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # -- files -------------------------------------------------------------------------------
    @errno_boundary
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT):
            raise errors.ReadOnly("open for writing on a read-only mount")
        node = await self.tree.getattr(inode)
        if node.is_dir:
            raise errors.IsADirectory(self.tree.describe(node))
        await self.tree.resolve_size(node)
        if node.size is None:  # one download per window (IoTDA): wait for it, in line
            await self.tree.download_for_reader(node, self._keep_alive)
        assert node.provider is not None
        ref = self.tree.ref(node)
        obj = self.cache.object(node.provider, ref)
        if obj.size is None:
            obj.size = node.size
        keep = node.version_seen == ref.version
        node.version_seen = ref.version
        fh = self._next_fh
        self._next_fh += 1
        self._files[fh] = (node, FileReader(self.cache, obj))
        self.read_ahead.opened(node)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep, direct_io=False)

    def _keep_alive(self, extra: float) -> None:
        """The request is waiting in line and the line moved: request_timeout (+ ``extra``)
        from now, never less than it had."""
        scope = _REQUEST_SCOPE.get()
        if scope is not None:
            scope.deadline = max(scope.deadline, trio.current_time() + self.request_timeout + extra)

    @errno_boundary
    async def read(  # type: ignore[override]  # pyfuse3 takes any buffer: no copy
        self, fh: int, off: int, size: int
    ) -> bytes | memoryview:
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
                raise to_fs_error(exc, what) from exc
            # the first answer already disagrees with the listing: nothing changed while open
            raise errors.RemoteError(
                f"{what}: {exc} (before any byte of it was read: the listing is out of date or "
                "the service is inconsistent)"
            ) from exc
        except ProviderError as exc:
            raise to_fs_error(exc, f"reading {self.tree.describe(node)} at {off}") from exc

    async def release(self, fh: int) -> None:
        entry = self._files.pop(fh, None)
        if entry is not None:
            entry[1].close()

    # -- xattrs ------------------------------------------------------------------------------
    def _xattrs(self, node: Node) -> dict[str, str]:
        # the same state `fusefs info` prints (VirtualTree.state), as strings
        if node.ino == ROOT_INO and self.control_path is not None:
            return {"control": str(self.control_path)}
        return {k: _xattr_text(v) for k, v in self.tree.state(node).items()}

    @errno_boundary
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        if not self.xattrs:  # getfattr -d: one "Operation not supported", not one per name
            raise pyfuse3.FUSEError(errno.ENOSYS)
        node = self.tree.node(inode)
        return [(_XATTR_PREFIX + k).encode() for k in self._xattrs(node)]

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        # `ls -l` asks every entry for security.selinux and system.posix_acl_access: answer
        # those on the fast path, without the time limit and logging of errno_boundary
        if not name.startswith(_XATTR_PREFIX_B) or self._no_xattr_errno == errno.ENOSYS:
            raise pyfuse3.FUSEError(self._no_xattr_errno)
        return await self._getxattr(inode, name)

    @errno_boundary
    async def _getxattr(self, inode: int, name: bytes) -> bytes:
        node = self.tree.node(inode)
        key = os.fsdecode(name)
        value = self._xattrs(node).get(key[len(_XATTR_PREFIX) :])
        if value is None:
            raise errors.NoAttribute(key)
        return value.encode()

    @errno_boundary
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = self.cache.block_size
        s.f_frsize = self.cache.block_size
        used = self.cache.store.unpinned_bytes + self.cache.store.pinned_bytes
        s.f_blocks = max(1, used // self.cache.block_size)
        s.f_bfree = 0
        s.f_bavail = 0
        s.f_files = len(self.tree.nodes)
        s.f_ffree = 0
        s.f_favail = 0
        s.f_namemax = 255
        return s

    @errno_boundary
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        if mode & os.W_OK:
            raise errors.ReadOnly("write access on a read-only mount")
        self.tree.node(inode)
        return True


__all__ = ["ROOT_INO", "FuseOperations"]
