"""Composition root of the daemon: http client, providers, cache, tree, FUSE adapter, nursery."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pyfuse3
import trio

from fusefs.cache.block_cache import BlockCache
from fusefs.config import HttpConfig
from fusefs.control import ControlServer, control_path
from fusefs.fuse_ops import FuseOperations
from fusefs.providers._bulk import BulkClient
from fusefs.providers.offline import OfflineProvider
from fusefs.providers.registry import build_providers
from fusefs.vfs.snapshots import ListingStore
from fusefs.vfs.tree import VirtualTree

if TYPE_CHECKING:
    from fusefs.config import MountConfig
    from fusefs.providers.base import Provider

log = logging.getLogger(__name__)

READ_AHEAD_KB = 16 * 1024


class MountError(Exception):
    """A mount that cannot start; the message says what to fix."""


def check_mountpoint(mountpoint: Path) -> None:
    try:
        st = os.stat(mountpoint)
    except FileNotFoundError:
        raise MountError(f"mountpoint {mountpoint} does not exist: create it with mkdir") from None
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise MountError(
                f"{mountpoint} holds a dead mount: run `fusefs unmount {mountpoint}` first"
            ) from None
        raise MountError(f"cannot use {mountpoint}: {exc.strerror}") from None
    if not os.path.isdir(mountpoint):
        raise MountError(f"mountpoint {mountpoint} is not a directory")
    if os.path.ismount(mountpoint) and st.st_dev != os.stat(mountpoint.parent).st_dev:
        raise MountError(f"{mountpoint} is already a mount point: unmount it or pick another")
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: install fuse3 and load the fuse module")


def private_cache_dir(path: Path) -> None:
    """The cache holds names, ids and sizes of private cloud files: 0700, fixed if it is not;
    everything the daemon creates afterwards is private too (umask 077)."""
    os.umask(0o077)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("cache dir %s had mode %o: other users could read it; now 0700", path, mode)
        path.chmod(0o700)


def _tune_readahead(mountpoint: Path) -> None:
    """Let the kernel read ahead further than its 128 KiB default (needs root; best effort)."""
    try:
        dev = os.stat(mountpoint).st_dev
        path = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
        path.write_text(str(READ_AHEAD_KB))
        log.debug("read_ahead_kb of %s set to %d", mountpoint, READ_AHEAD_KB)
    except OSError as exc:
        log.debug("could not raise read_ahead_kb: %s", exc)


async def _terminate_on_signals() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("received %s, unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


def _larger_socket_reads() -> None:
    """httpcore reads at most 64 KiB per receive; at ~1 GB/s that is 16k Python round trips a
    second. Reading up to 1 MiB when that much has arrived halves the daemon's CPU per byte.
    A class attribute of httpcore, not an API: if it goes away we lose speed, nothing else."""
    try:
        from httpcore._async.http11 import AsyncHTTP11Connection
    except ImportError:
        return
    if getattr(AsyncHTTP11Connection, "READ_NUM_BYTES", None) == 64 * 1024:
        AsyncHTTP11Connection.READ_NUM_BYTES = 1 << 20


def make_http_client(http: HttpConfig | None = None) -> httpx.AsyncClient:
    http = http or HttpConfig()
    _larger_socket_reads()
    verify: ssl.SSLContext | bool = True
    if http.ca_bundle is not None:
        verify = ssl.create_default_context(cafile=str(http.ca_bundle))
    return httpx.AsyncClient(
        timeout=httpx.Timeout(http.read_timeout, connect=http.connect_timeout),
        verify=verify,
        proxy=http.proxy,
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        follow_redirects=False,
        headers={"User-Agent": "fusefs/0.1"},
    )


async def run_mount(cfg: MountConfig, mountpoint: Path, *, offline: bool = False) -> None:
    check_mountpoint(mountpoint)
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(make_http_client(cfg.http))
        bulk = BulkClient(
            connect_timeout=cfg.http.connect_timeout,
            read_timeout=cfg.http.read_timeout,
            ca_bundle=str(cfg.http.ca_bundle) if cfg.http.ca_bundle else None,
            proxy=cfg.http.proxy,
            user_agent="fusefs/0.1",
        )
        stack.callback(bulk.close)
        providers: list[Provider] = list(build_providers(cfg, client, bulk=bulk))
        if offline:
            log.warning("offline mode: serving saved listings and cached bytes only")
            providers = [OfflineProvider(p) for p in providers]
        for p in providers:
            stack.push_async_callback(p.aclose)
        private_cache_dir(Path(cfg.cache.dir))
        cache = BlockCache(
            Path(cfg.cache.dir),
            block_size=cfg.cache.block_size,
            max_bytes=cfg.cache.max_size,
            min_free_ratio=cfg.cache.min_free_ratio,
            memory_budget=cfg.cache.memory_budget,
        )
        snapshots = ListingStore(Path(cfg.cache.dir))
        tree = VirtualTree(
            providers,
            cache,
            dir_ttl=cfg.mount.dir_ttl,
            snapshots=snapshots,
            list_timeout=cfg.mount.request_timeout * 0.75,
        )
        # derived from the mountpoint alone: clients find it without xattrs (control.py)
        control = ControlServer(tree, cache, control_path(mountpoint))
        ops = FuseOperations(
            tree,
            cache,
            request_timeout=cfg.mount.request_timeout,
            control_path=control.path,
            xattrs=cfg.mount.xattrs,
        )
        options = set(pyfuse3.default_options)
        options |= {"fsname=fusefs", "subtype=fusefs", "ro", "noatime"}
        async with trio.open_nursery() as nursery:
            await nursery.start(cache.run)
            await nursery.start(control.run)
            await nursery.start(snapshots.run)  # listing saves, off the event loop
            pyfuse3.init(ops, str(mountpoint), options)
            clean = False
            try:
                log.info(
                    "mounted %s: %s", mountpoint, ", ".join(p.name for p in providers) or "nothing"
                )
                nursery.start_soon(_terminate_on_signals, name="signals")
                nursery.start_soon(trio.to_thread.run_sync, _tune_readahead, mountpoint)
                await pyfuse3.main()
                clean = True
            finally:
                # after a crash, leave a dead mount (ENOTCONN) rather than an empty directory
                # that a sync tool could read as "everything was deleted" (as s3ql does)
                pyfuse3.close(unmount=clean)
                log.info("unmounted %s" if clean else "daemon failed; %s left dead", mountpoint)
            nursery.cancel_scope.cancel()
