"""FuseOperations driven without a mount (as s3ql's t3_fs_api and mountpoint-s3's tests/fs.rs
do): the adapter's answers to requests the kernel could send, errnos included. Read as a spec:
each test is one request (or a few) and what the kernel gets back."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio

from fusefs.fuse_ops import FuseOperations
from fusefs.providers.base import (
    AuthError,
    EntryKind,
    ObjectNotFound,
    ObjectRef,
    ProtocolError,
    ProviderError,
    RemoteEntry,
    TransientError,
    Unavailable,
    VersionMismatch,
)
from fusefs.vfs.fs import ROOT_INO, Filesystem
from tests.helpers.fakes import object_bytes
from tests.unit.test_tree import ListingProvider, entry, make_tree

BS = 4096
CTX: Any = None  # the RequestContext: the adapter never reads it


def ops(tmp_path: Path, p: ListingProvider | None = None, **kw: Any) -> FuseOperations:
    tree = make_tree(tmp_path, p or ListingProvider(), [0.0])
    control = kw.pop("control_path", None)
    return FuseOperations(Filesystem(tree, tree.cache, control_path=control), **kw)


class FilesProvider(ListingProvider):
    """A folder ``d`` and files with bytes; ``stream_error`` fails every download."""

    def __init__(self) -> None:
        super().__init__()
        self.tree[""] = [entry("d", "D", EntryKind.DIR), self.add_file("big", 16 * BS)]
        self.tree["D"] = [self.add_file(f"f{i:02d}", 100 + i) for i in range(25)]
        self.stream_error: ProviderError | None = None

    def add_file(self, name: str, size: int) -> RemoteEntry:
        self.objects[name] = object_bytes(name, size)
        return RemoteEntry(name, name, EntryKind.FILE, name, size, 7_000_000_000, 0, "v1")

    @contextlib.asynccontextmanager
    async def open_stream(
        self, ref: ObjectRef, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        if self.stream_error is not None:
            raise self.stream_error
        async with super().open_stream(ref, offset, length) as stream:
            yield stream


@contextlib.asynccontextmanager
async def running(tmp_path: Path, **kw: Any) -> AsyncIterator[tuple[FuseOperations, FilesProvider]]:
    """An adapter whose cache runs (reads need its nursery), over FilesProvider."""
    p = FilesProvider()
    o = ops(tmp_path, p, request_timeout=5, **kw)
    async with trio.open_nursery() as nursery:
        await nursery.start(o.fs.cache.run)
        yield o, p
        nursery.cancel_scope.cancel()


async def errno_of(call: Any) -> int:
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await call
    return exc.value.errno


async def lookup_path(o: FuseOperations, path: str) -> pyfuse3.EntryAttributes:
    attrs: pyfuse3.EntryAttributes | None = None
    ino: int = ROOT_INO
    for part in path.split("/"):
        attrs = await o.lookup(ino, os.fsencode(part), CTX)
        ino = attrs.st_ino
    assert attrs is not None
    return attrs


class Token:
    """Stands in for pyfuse3's ReaddirToken: a buffer with room for ``room`` entries."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.got: list[tuple[str, int, int]] = []  # name, inode, offset of the next entry


@pytest.fixture
def replies(monkeypatch: pytest.MonkeyPatch) -> None:
    def readdir_reply(token: Token, name: bytes, attrs: pyfuse3.EntryAttributes, nxt: int) -> bool:
        if len(token.got) >= token.room:
            return False
        token.got.append((os.fsdecode(name), attrs.st_ino, nxt))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", readdir_reply)


# -- lookups and attributes ---------------------------------------------------------------------
async def test_lookup_answers_attributes_from_the_listing(tmp_path: Path) -> None:
    async with running(tmp_path) as (o, p):
        d = await lookup_path(o, "p/d")
        assert stat.S_ISDIR(d.st_mode) and d.st_mode & 0o777 == 0o555 and d.st_nlink == 2
        f = await lookup_path(o, "p/d/f03")
        assert stat.S_ISREG(f.st_mode) and f.st_mode & 0o777 == 0o444 and f.st_nlink == 1
        assert f.st_size == 103 and f.st_blksize == BS and f.st_blocks == 1
        assert f.st_mtime_ns == f.st_atime_ns == f.st_ctime_ns == 7_000_000_000
        assert (f.st_uid, f.st_gid) == (os.getuid(), os.getgid())
        assert f.entry_timeout == f.attr_timeout == 10  # dir_ttl
        assert (await o.getattr(f.st_ino, CTX)).st_size == 103
        assert await errno_of(o.lookup(d.st_ino, b"nope", CTX)) == errno.ENOENT
        assert p.calls == 2  # one listing per directory answers every lookup in it


async def test_unknown_inode_is_enoent(tmp_path: Path) -> None:
    o = ops(tmp_path, request_timeout=5)
    assert await errno_of(o.getattr(999, CTX)) == errno.ENOENT
    assert await errno_of(o.opendir(999, CTX)) == errno.ENOENT


async def test_forget_lets_a_removed_entry_go(tmp_path: Path) -> None:
    clock = [0.0]
    p = ListingProvider()
    p.tree[""] = [entry("a", "A")]
    tree = make_tree(tmp_path, p, clock)
    o = FuseOperations(Filesystem(tree, tree.cache), request_timeout=5)
    top = await lookup_path(o, "p")
    a = await o.lookup(top.st_ino, b"a", CTX)
    p.tree[""] = []
    clock[0] = 11
    assert await errno_of(o.lookup(top.st_ino, b"a", CTX)) == errno.ENOENT
    assert (await o.getattr(a.st_ino, CTX)).st_ino == a.st_ino  # the kernel still holds it
    await o.forget([(a.st_ino, 1)])
    assert await errno_of(o.getattr(a.st_ino, CTX)) == errno.ENOENT


async def test_writes_are_erofs(tmp_path: Path) -> None:
    o = ops(tmp_path, request_timeout=5)
    assert await errno_of(o.setattr(ROOT_INO, None, None, None, CTX)) == errno.EROFS
    assert await errno_of(o.access(ROOT_INO, os.W_OK, CTX)) == errno.EROFS
    assert await o.access(ROOT_INO, os.R_OK | os.X_OK, CTX) is True
    assert await errno_of(o.open(ROOT_INO, os.O_RDWR, CTX)) == errno.EROFS


# -- directories --------------------------------------------------------------------------------
async def test_readdir_pages_by_offset_and_remembers_what_it_returned(
    tmp_path: Path, replies: None
) -> None:
    async with running(tmp_path) as (o, _p):
        d = await lookup_path(o, "p/d")
        fh = await o.opendir(d.st_ino, CTX)
        pages: list[list[tuple[str, int, int]]] = []
        start = 0
        while True:
            token = Token(room=10)
            await o.readdir(fh, start, token)  # type: ignore[arg-type]
            if not token.got:
                break
            pages.append(token.got)
            start = token.got[-1][2]
        await o.releasedir(fh)
        assert [len(pg) for pg in pages] == [10, 10, 5]
        names = [name for pg in pages for name, _, _ in pg]
        assert names == [f"f{i:02d}" for i in range(25)]
        # READDIRPLUS: each entry returned counts as a lookup the kernel will forget
        ino = pages[0][0][1]
        assert (await o.getattr(ino, CTX)).st_size == 100
        await o.forget([(ino, 1)])


async def test_readdir_keeps_its_snapshot_while_the_listing_changes(
    tmp_path: Path, replies: None
) -> None:
    clock = [0.0]
    p = ListingProvider()
    p.tree[""] = [entry(n, n) for n in "abcd"]
    tree = make_tree(tmp_path, p, clock)
    o = FuseOperations(Filesystem(tree, tree.cache), request_timeout=5)
    top = await lookup_path(o, "p")
    fh = await o.opendir(top.st_ino, CTX)
    first = Token(room=2)
    await o.readdir(fh, 0, first)  # type: ignore[arg-type]
    p.tree[""] = [entry(n, n) for n in "abcdxyz"]
    clock[0] = 11  # the listing is refreshed meanwhile: the pass goes on over its snapshot
    rest = Token(room=100)
    await o.readdir(fh, first.got[-1][2], rest)  # type: ignore[arg-type]
    assert [n for n, _, _ in first.got + rest.got] == ["a", "b", "c", "d"]


async def test_opendir_of_a_file_is_enotdir(tmp_path: Path) -> None:
    async with running(tmp_path) as (o, _p):
        f = await lookup_path(o, "p/big")
        assert await errno_of(o.opendir(f.st_ino, CTX)) == errno.ENOTDIR


# -- files --------------------------------------------------------------------------------------
async def test_open_read_release(tmp_path: Path) -> None:
    async with running(tmp_path) as (o, p):
        f = await lookup_path(o, "p/big")
        info = await o.open(f.st_ino, os.O_RDONLY, CTX)
        assert info.keep_cache is False and info.direct_io is False  # first open of this version
        data = p.objects["big"]
        assert bytes(await o.read(info.fh, 0, BS)) == data[:BS]
        assert bytes(await o.read(info.fh, 5 * BS + 7, 3 * BS)) == data[5 * BS + 7 : 8 * BS + 7]
        assert await o.read(info.fh, 16 * BS, BS) == b""  # at the end of the file
        await o.release(info.fh)
        assert await errno_of(o.read(info.fh, 0, BS)) == errno.EBADF
        again = await o.open(f.st_ino, os.O_RDONLY, CTX)
        assert again.keep_cache is True  # unchanged since the last open: keep the page cache
        assert again.fh != info.fh
        await o.release(again.fh)


async def test_open_of_a_directory_is_eisdir(tmp_path: Path) -> None:
    async with running(tmp_path) as (o, _p):
        d = await lookup_path(o, "p/d")
        assert await errno_of(o.open(d.st_ino, os.O_RDONLY, CTX)) == errno.EISDIR


async def test_unknown_file_handle_is_ebadf(tmp_path: Path) -> None:
    assert await errno_of(ops(tmp_path, request_timeout=5).read(12345, 0, 4096)) == errno.EBADF


async def test_unknown_directory_handle_is_ebadf(tmp_path: Path) -> None:
    token: Any = None  # never reached: the handle is looked up first
    o = ops(tmp_path, request_timeout=5)
    assert await errno_of(o.readdir(12345, 0, token)) == errno.EBADF


async def test_releasing_an_unknown_handle_is_harmless(tmp_path: Path) -> None:
    o = ops(tmp_path, request_timeout=5)
    await o.release(12345)
    await o.releasedir(12345)
    assert await errno_of(o.read(12345, 0, 1)) == errno.EBADF  # and it stays unknown


# -- the ESTALE rule (docs/semantics.md, "Versions") ----------------------------------------------
async def test_an_object_that_changed_while_open_is_estale(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(tmp_path) as (o, p):
        fh = (await o.open((await lookup_path(o, "p/big")).st_ino, os.O_RDONLY, CTX)).fh
        await o.read(fh, 0, BS)  # bytes of this version arrived: the service served it
        p.stream_error = VersionMismatch("size is now 5000", call="p.download")
        assert await errno_of(o.read(fh, 15 * BS, BS)) == errno.ESTALE
        assert "changed while open" in caplog.text
        p.stream_error = ObjectNotFound("no such object", call="p.download")
        assert await errno_of(o.read(fh, 12 * BS, BS)) == errno.ESTALE


@pytest.mark.parametrize(
    ("error", "expected", "logged"),
    [
        (ObjectNotFound("no such object", call="p.download"), errno.ENOENT, "reading /p/big at"),
        (VersionMismatch("size 5000", call="p.download"), errno.EIO, "listing is out of date"),
    ],
)
async def test_a_first_answer_that_disagrees_is_not_estale(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    error: ProviderError,
    expected: int,
    logged: str,
) -> None:
    caplog.set_level(logging.DEBUG, "fusefs.fuse_ops")
    async with running(tmp_path) as (o, p):
        fh = (await o.open((await lookup_path(o, "p/big")).st_ino, os.O_RDONLY, CTX)).fh
        p.stream_error = error
        assert await errno_of(o.read(fh, 0, BS)) == expected
        assert logged in caplog.text


# -- provider errors -> their errnos (errors.fs_error_for) --------------------------------------
@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ObjectNotFound("gone", call="p.list"), errno.ENOENT),
        (AuthError("token rejected", call="p.list"), errno.EACCES),
        (Unavailable("connection refused", call="p.list"), errno.ENETDOWN),
        (TransientError("HTTP 503", call="p.list"), errno.EIO),
        (ProtocolError("not JSON", call="p.list"), errno.EIO),
    ],
)
async def test_a_listing_error_answers_its_errno_and_names_the_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, error: ProviderError, expected: int
) -> None:
    caplog.set_level(logging.DEBUG, "fusefs.fuse_ops")
    p = ListingProvider()
    p.error = error
    o = ops(tmp_path, p, request_timeout=5)
    assert await errno_of(o.lookup(ROOT_INO + 1, b"x", CTX)) == expected
    assert "listing /p: p.list: " in caplog.text  # what was done, the remote call, its answer


async def test_a_read_error_answers_its_errno(tmp_path: Path) -> None:
    async with running(tmp_path) as (o, p):
        fh = (await o.open((await lookup_path(o, "p/big")).st_ino, os.O_RDONLY, CTX)).fh
        p.stream_error = Unavailable("connection refused", call="p.download")
        assert await errno_of(o.read(fh, 0, BS)) == errno.ENETDOWN
        p.stream_error = AuthError("forbidden", call="p.download")
        assert await errno_of(o.read(fh, 8 * BS, BS)) == errno.EACCES


async def test_a_bug_is_eio_with_its_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    p = ListingProvider()
    p.error = RuntimeError("a bug")
    o = ops(tmp_path, p, request_timeout=5)
    assert await errno_of(o.lookup(ROOT_INO + 1, b"x", CTX)) == errno.EIO
    assert "unexpected error" in caplog.text and "RuntimeError: a bug" in caplog.text


async def test_a_request_longer_than_request_timeout_is_eio(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    p = ListingProvider()
    p.hang = True  # the tree would give up after list_timeout (0.5 s): the request first
    o = ops(tmp_path, p, request_timeout=0.1)
    assert await errno_of(o.lookup(ROOT_INO + 1, b"x", CTX)) == errno.EIO
    assert "did not finish within request_timeout" in caplog.text


# -- extended attributes ------------------------------------------------------------------------
async def test_xattrs_off_answer_enosys_so_the_kernel_stops_asking(tmp_path: Path) -> None:
    async with running(tmp_path) as (o, _p):
        f = await lookup_path(o, "p/big")
        # the listing is empty (getfattr -d prints nothing); a name asked for is not supported
        assert await o.listxattr(f.st_ino, CTX) == []
        assert await errno_of(o.getxattr(f.st_ino, b"user.fusefs.provider", CTX)) == errno.ENOSYS
        assert await errno_of(o.getxattr(f.st_ino, b"security.selinux", CTX)) == errno.ENOSYS


async def test_xattrs_on_show_the_state_of_fusefs_info(tmp_path: Path) -> None:
    async with running(tmp_path, xattrs=True, control_path=Path("/run/x.sock")) as (o, _p):
        f = await lookup_path(o, "p/big")
        names = await o.listxattr(f.st_ino, CTX)
        assert b"user.fusefs.remote_id" in names and b"user.fusefs.cached_bytes" in names
        assert await o.getxattr(f.st_ino, b"user.fusefs.provider", CTX) == b"p"
        assert await o.getxattr(f.st_ino, b"user.fusefs.pinned", CTX) == b"0"
        assert await errno_of(o.getxattr(f.st_ino, b"user.fusefs.nope", CTX)) == errno.ENODATA
        assert await errno_of(o.getxattr(f.st_ino, b"security.selinux", CTX)) == errno.ENODATA
        assert await o.listxattr(ROOT_INO, CTX) == [b"user.fusefs.control"]
        assert await o.getxattr(ROOT_INO, b"user.fusefs.control", CTX) == b"/run/x.sock"
        assert await errno_of(o.getxattr(999, b"user.fusefs.provider", CTX)) == errno.ENOENT


# -- the file system ----------------------------------------------------------------------------
async def test_statfs_reports_the_cache_capacity_use_and_free(tmp_path: Path) -> None:
    async with running(tmp_path) as (o, _p):
        cap = o.fs.cache.store.max_bytes
        empty = await o.statfs(CTX)
        assert empty.f_bsize == empty.f_frsize == BS and empty.f_namemax == 255
        assert empty.f_blocks == cap // BS and empty.f_bfree == empty.f_bavail == cap // BS
        f = await lookup_path(o, "p/big")
        fh = (await o.open(f.st_ino, os.O_RDONLY, CTX)).fh
        for off in range(0, 16 * BS, BS):
            await o.read(fh, off, BS)
        node = o.fs.tree.node(f.st_ino)
        assert node.provider is not None
        await o.fs.cache.flush(o.fs.cache.object(node.provider, o.fs.tree.ref(node)).oid)
        s = await o.statfs(CTX)  # the bytes written to the cache are used, the rest free
        assert s.f_blocks == empty.f_blocks
        assert s.f_bfree <= s.f_blocks - 16
        # inodes: never shown as running out (df -i)
        assert s.f_files - s.f_ffree == len(o.fs.tree.nodes)
        assert s.f_ffree > 1_000_000 and s.f_favail == s.f_ffree


async def test_attributes_show_the_configured_owner_and_modes(tmp_path: Path) -> None:
    o = ops(
        tmp_path,
        FilesProvider(),
        request_timeout=5,
        uid=1234,
        gid=4321,
        file_mode=0o440,
        dir_mode=0o550,
    )
    d = await o.lookup(ROOT_INO, b"p", CTX)
    assert d.st_mode == stat.S_IFDIR | 0o550 and (d.st_uid, d.st_gid) == (1234, 4321)
    f = await lookup_path(o, "p/big")
    assert f.st_mode == stat.S_IFREG | 0o440 and (f.st_uid, f.st_gid) == (1234, 4321)
    default = ops(tmp_path / "b", FilesProvider(), request_timeout=5)
    g = await lookup_path(default, "p/big")
    assert g.st_mode == stat.S_IFREG | 0o444 and g.st_uid == os.getuid()


async def test_read_latency_is_recorded_only_when_asked(tmp_path: Path) -> None:
    seen: list[float] = []
    async with running(tmp_path, read_latency=seen.append) as (o, _p):
        f = await lookup_path(o, "p/big")
        fh = (await o.open(f.st_ino, os.O_RDONLY, CTX)).fh
        assert len(await o.read(fh, 0, BS)) == BS
        assert await errno_of(o.read(fh + 100, 0, BS)) == errno.EBADF  # failures are timed too
        assert len(seen) == 2 and all(t >= 0 for t in seen)
    async with running(tmp_path / "b") as (plain, _p):
        assert "read" not in vars(plain)  # off: the class's read, no wrapper


def test_mount_options_for_other_users() -> None:
    from dataclasses import replace

    from fusefs.config import MountConfig, MountOptions
    from fusefs.mount import fuse_options

    def opts(**kw: Any) -> set[str]:
        return fuse_options(replace(MountConfig(), mount=MountOptions(**kw)))

    base = {"fsname=fusefs", "subtype=fusefs", "ro", "noatime"}
    assert opts() == base  # the mounting user alone: the kernel lets nobody else in
    assert opts(allow_other=True) == base | {"allow_other", "default_permissions"}
    assert opts(allow_other=True, default_permissions=False) == base | {"allow_other"}
    assert opts(default_permissions=True) == base | {"default_permissions"}
