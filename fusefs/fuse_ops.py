"""The thin FUSE adapter: pyfuse3's arguments -> ``vfs.fs.Filesystem`` calls, their answers ->
pyfuse3's structures, and the one errno boundary.

Only this module and ``mount.py`` import pyfuse3; this one imports nothing of the cache or the
providers. Every handler runs under ``errno_boundary``: a time limit (``request_timeout``), any
failure -> ``errors.fs_error_for`` -> its errno, anything unexpected -> EIO + a log line with its
traceback. Nothing here may let an exception escape to pyfuse3, which would end the mount.
"""

from __future__ import annotations

import contextvars
import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar, cast

import pyfuse3
import trio

from fusefs import errors
from fusefs.vfs.fs import ROOT_INO, XATTR_PREFIX, Filesystem, Node

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
_XATTR_PREFIX_B = XATTR_PREFIX.encode()
FREE_INODES = 1 << 31  # statfs: the free inode count shown (df -i), there is no real limit


# the time limit of the FUSE request being handled: a request waiting in line for a download
# turn moves it on (FuseOperations._keep_alive)
_REQUEST_SCOPE: contextvars.ContextVar[trio.CancelScope | None] = contextvars.ContextVar(
    "fusefs_request_scope", default=None
)


def errno_boundary(
    fn: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """The one place a failure becomes an errno (``fn`` may be a plain function that returns
    the coroutine to await: then the hot path has no frame of its own)."""

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
        except trio.TooSlowError:
            log.warning(
                "%s%r did not finish within request_timeout=%ss; answering EIO",
                fn.__name__,
                args[1:3],
                self.request_timeout,
            )
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception as exc:  # never BaseException: trio.Cancelled must propagate
            err = errors.fs_error_for(exc)
            if err is None:
                log.exception("%s%r: unexpected error", fn.__name__, args[1:3])
                raise pyfuse3.FUSEError(errno.EIO) from None
            log.log(err.log_level, "%s%r failed: %s", fn.__name__, args[1:3], err)
            raise pyfuse3.FUSEError(err.errno) from None

    return handler


async def _timed_read(
    read: Callable[[int, int, int], Coroutine[Any, Any, bytes | memoryview]],
    record: Callable[[float], None],
    fh: int,
    off: int,
    size: int,
) -> bytes | memoryview:
    """A read through the errno boundary, its duration handed to ``record`` (metrics)."""
    t0 = time.perf_counter()
    try:
        return await read(fh, off, size)
    finally:
        record(time.perf_counter() - t0)


class FuseOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        fs: Filesystem,
        *,
        request_timeout: float,
        xattrs: bool = False,
        uid: int | None = None,
        gid: int | None = None,
        file_mode: int = 0o444,
        dir_mode: int = 0o555,
        read_latency: Callable[[float], None] | None = None,
    ) -> None:
        super().__init__()
        self.fs = fs
        # ENOSYS makes the kernel stop sending getxattr for good, answering EOPNOTSUPP itself:
        # `ls -l` then costs no round trip per entry (docs/cache.md)
        self.xattrs = xattrs
        self._no_xattr_errno = errno.ENODATA if xattrs else errno.ENOSYS
        self.request_timeout = request_timeout
        # what every entry shows (mount.uid/gid/file_mode/dir_mode): the mounting user's by default
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.file_mode = stat.S_IFREG | (file_mode & 0o7777)
        self.dir_mode = stat.S_IFDIR | (dir_mode & 0o7777)
        if read_latency is not None:  # metrics on: time each read; off, reads pay nothing
            self.read = functools.partial(_timed_read, self.read, read_latency)  # type: ignore[method-assign]

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
        if node.is_dir:
            a.st_mode = self.dir_mode
            a.st_nlink = 2
            a.st_size = 0
        else:
            a.st_mode = self.file_mode
            a.st_nlink = 1
            a.st_size = node.size or 0
        a.st_blksize = self.fs.block_size
        a.st_blocks = (a.st_size + 511) // 512
        a.st_uid = self.uid
        a.st_gid = self.gid
        a.st_atime_ns = node.mtime_ns
        a.st_mtime_ns = node.mtime_ns
        a.st_ctime_ns = node.ctime_ns or node.mtime_ns
        timeout = self.fs.attr_timeout(node)
        a.entry_timeout = timeout
        a.attr_timeout = timeout
        return a

    # -- lookups -----------------------------------------------------------------------------
    @errno_boundary
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self._attrs(await self.fs.lookup(parent_inode, os.fsdecode(name)))

    @errno_boundary
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attrs(await self.fs.getattr(inode))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        try:
            self.fs.forget(inode_list)
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
        return self.fs.opendir(inode)

    @errno_boundary
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        # the per-entry call of every `ls -l` (READDIRPLUS): names bound once, attrs cached
        attrs, reply, fsencode = self._attrs, pyfuse3.readdir_reply, os.fsencode

        def add(name: str, node: Node, next_id: int) -> bool:
            return reply(token, fsencode(name), attrs(node), next_id)

        await self.fs.readdir(fh, start_id, add)

    async def releasedir(self, fh: int) -> None:
        self.fs.releasedir(fh)

    # -- files -------------------------------------------------------------------------------
    @errno_boundary
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        opened = await self.fs.open(inode, flags, self._keep_alive)
        return pyfuse3.FileInfo(fh=opened.fh, keep_cache=opened.keep_cache, direct_io=False)

    def _keep_alive(self, extra: float) -> None:
        """The request is waiting in line and the line moved: request_timeout (+ ``extra``)
        from now, never less than it had."""
        scope = _REQUEST_SCOPE.get()
        if scope is not None:
            scope.deadline = max(scope.deadline, trio.current_time() + self.request_timeout + extra)

    @errno_boundary
    def read(  # type: ignore[override]  # pyfuse3 takes any buffer: no copy
        self, fh: int, off: int, size: int
    ) -> Coroutine[Any, Any, bytes | memoryview]:
        # not async: the boundary awaits the facade's read itself, one frame less per read
        return self.fs.read(fh, off, size)

    async def release(self, fh: int) -> None:
        self.fs.release(fh)

    # -- xattrs ------------------------------------------------------------------------------
    @errno_boundary
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        if not self.xattrs:  # getfattr -d prints nothing (no "Operation not supported" per name)
            return []
        return [k.encode() for k in self.fs.xattrs(inode)]

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        # `ls -l` asks every entry for security.selinux and system.posix_acl_access: answer
        # those on the fast path, without the time limit and logging of errno_boundary
        if not name.startswith(_XATTR_PREFIX_B) or self._no_xattr_errno == errno.ENOSYS:
            raise pyfuse3.FUSEError(self._no_xattr_errno)
        return await self._getxattr(inode, name)

    @errno_boundary
    async def _getxattr(self, inode: int, name: bytes) -> bytes:
        return self.fs.getxattr(inode, os.fsdecode(name)).encode()

    @errno_boundary
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        # df: the cache's capacity, its use, and what the cap leaves (docs/semantics.md)
        u = self.fs.usage()
        bs = u.block_size
        s = pyfuse3.StatvfsData()
        s.f_bsize = bs
        s.f_frsize = bs
        s.f_blocks = max(1, -(-u.capacity_bytes // bs))
        s.f_bfree = min(s.f_blocks, u.free_bytes // bs)
        s.f_bavail = s.f_bfree
        # inodes are made as names are listed, without a limit: never shown as running out
        s.f_ffree = FREE_INODES
        s.f_favail = FREE_INODES
        s.f_files = u.inodes + FREE_INODES
        s.f_namemax = 255
        return s

    @errno_boundary
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        self.fs.access(inode, mode)
        return True


__all__ = ["ROOT_INO", "FuseOperations"]
