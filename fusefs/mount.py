"""Composition root of the daemon: http client, providers, cache, tree, FUSE adapter, nursery."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import ssl
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pyfuse3
import trio

from fusefs import errors
from fusefs.cache.block_cache import BlockCache
from fusefs.cache.store import CacheDirBusy, lock_cache_dir
from fusefs.config import HttpConfig
from fusefs.control import FSTYPE, ControlServer, control_path, mount_table
from fusefs.fuse_ops import FuseOperations
from fusefs.providers._bulk import BulkClient
from fusefs.providers.base import ProtocolError, ProviderError, TransientError, Unavailable
from fusefs.providers.offline import OfflineProvider
from fusefs.providers.registry import build_providers
from fusefs.vfs.background import BackgroundFetcher
from fusefs.vfs.fs import Filesystem
from fusefs.vfs.snapshots import ListingStore
from fusefs.vfs.tree import VirtualTree

if TYPE_CHECKING:
    from fusefs.config import MountConfig
    from fusefs.providers.base import Capabilities, ObjectRef, Provider, RemoteEntry

log = logging.getLogger(__name__)

READ_AHEAD_KB = 16 * 1024


class MountError(Exception):
    """A mount that cannot start; the message says what to fix."""


def mount_state(mountpoint: Path) -> tuple[str, bool] | None:
    """What /proc/self/mountinfo has mounted at ``mountpoint``: (fstype, dead) or None.

    The mount table, not ``os.stat``: after the daemon of a FUSE mount died, ``stat`` of the
    mountpoint may still succeed from the kernel's attribute cache, or fail with ENOTCONN, and
    ``os.path.ismount`` then says False. A FUSE mount is dead when its connection answers
    ENOTCONN (``statvfs`` always asks the daemon); one that does not answer within 5 s counts
    as alive (a busy daemon)."""
    real = os.fsencode(os.path.realpath(mountpoint))
    found = [fstype for mp, fstype, _ in mount_table() if mp == real]
    if not found:
        return None
    fstype = os.fsdecode(found[-1])  # the last mount on a path covers the earlier ones
    if not fstype.startswith("fuse"):
        return fstype, False
    result: list[int] = []

    def probe() -> None:
        try:
            os.statvfs(mountpoint)
            result.append(0)
        except OSError as exc:
            result.append(exc.errno or 0)

    t = threading.Thread(target=probe, name="statvfs", daemon=True)
    t.start()
    t.join(5.0)
    return fstype, bool(result) and result[0] == errno.ENOTCONN


def check_mountpoint(mountpoint: Path, *, allow_non_empty: bool = False) -> None:
    state = mount_state(mountpoint)
    if state is not None:
        fstype, dead = state
        what = "fusefs mount" if fstype == FSTYPE else f"{fstype} mount"
        if dead:
            raise MountError(
                f"{mountpoint} holds a dead {what} (its daemon is gone): run "
                f"`fusefs unmount {mountpoint}` (or `fusermount3 -u {mountpoint}`) first"
            )
        raise MountError(
            f"{mountpoint} is already a mount point ({what}): unmount it or pick another"
        )
    try:
        os.stat(mountpoint)
    except FileNotFoundError:
        raise MountError(f"mountpoint {mountpoint} does not exist: create it with mkdir") from None
    except OSError as exc:
        raise MountError(f"cannot use {mountpoint}: {exc.strerror}") from None
    if not os.path.isdir(mountpoint):
        raise MountError(f"mountpoint {mountpoint} is not a directory")
    if not allow_non_empty:
        try:
            names = sorted(os.listdir(mountpoint))
        except OSError as exc:
            raise MountError(f"cannot list {mountpoint}: {exc.strerror}") from None
        if names:
            raise MountError(
                f"mountpoint {mountpoint} is not empty ({len(names)} entries, e.g. {names[0]!r}):"
                " the mount would hide them; empty it, pick another directory, or pass"
                " --allow-non-empty"
            )
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


AUTH_CHECK_TIMEOUT = 20.0  # at most, and at most request_timeout: each provider's start check
# a provider whose credentials were rejected at start is asked again at most this often (the
# secrets are read once, and IAM locks a user out after repeated wrong passwords)
RECHECK_INTERVAL = 60.0


async def check_provider(provider: Provider, timeout: float) -> ProviderError | None:
    """Authenticate ``provider`` once (its ``check_auth``, else a listing of its root): the
    error that stops it, or None."""
    check = getattr(provider, "check_auth", None)
    try:
        with trio.fail_after(timeout):
            if check is not None:
                await check()
            else:
                await provider.list_dir("")
    except trio.TooSlowError:
        return Unavailable(f"no answer within {timeout:.0f} s", call=f"{provider.name}.check")
    except ProviderError as exc:
        return exc
    except Exception as exc:  # a bug or an unmapped error: this provider is down, not the start
        log.exception("%s: start check failed unexpectedly", provider.name)
        return ProtocolError(
            f"start check failed: {type(exc).__name__}: {exc}", call=f"{provider.name}.check"
        )
    return None


async def check_providers(
    providers: list[Provider], timeout: float
) -> dict[str, ProviderError | None]:
    """Every provider's start check, concurrently: name -> error (None: it authenticated)."""
    results: dict[str, ProviderError | None] = {}

    async def one(p: Provider) -> None:
        results[p.name] = await check_provider(p, timeout)

    async with trio.open_nursery() as nursery:
        for p in providers:
            nursery.start_soon(one, p)
    return results


def _errno_name(exc: ProviderError) -> str:
    code = errors.fs_error_for(exc).errno
    return f"{errno.errorcode.get(code, str(code))} ({os.strerror(code)})"


class DownAtStart:
    """A provider that failed its start check for good (credentials rejected, an answer that is
    not the API's): its listings, the provider's own directory first, answer that error
    (EACCES for rejected credentials, EIO otherwise) without a call, until a new check passes.
    A check runs at most every RECHECK_INTERVAL seconds, when a listing is asked for; once one
    passes this is the provider itself again."""

    def __init__(self, inner: Provider, error: ProviderError, timeout: float) -> None:
        self.inner = inner
        self.name: str = inner.name
        self.capabilities: Capabilities = inner.capabilities
        self.error: ProviderError | None = error
        self._timeout = timeout
        self._checked = trio.current_time()
        self._lock = trio.Lock()

    # calls that would reach the service with the rejected credentials: refused while down (a
    # read of bytes not cached answers the start error; IAM locks out repeated wrong passwords)
    _GATED = frozenset({"fetch_range", "prepare_reads"})

    def __getattr__(self, name: str) -> Any:  # turns, describe helpers, ...
        attr = getattr(self.inner, name)
        if name in self._GATED and callable(attr):

            async def gated(*args: Any, **kwargs: Any) -> Any:
                self._refuse()
                return await attr(*args, **kwargs)

            return gated
        return attr

    @property
    def background_fetch(self) -> bool:
        """No background downloads while the credentials stand rejected."""
        return self.error is None and bool(getattr(self.inner, "background_fetch", False))

    def _refuse(self) -> None:
        if self.error is not None:
            raise self.error.with_traceback(None)

    async def list_dir(self, key: str) -> list[RemoteEntry]:
        if self.error is not None:
            async with self._lock:
                if self.error is not None and (
                    trio.current_time() - self._checked >= RECHECK_INTERVAL
                ):
                    error = await check_provider(self.inner, self._timeout)
                    self._checked = trio.current_time()
                    if error is None:
                        log.warning("%s authenticates now: serving it again", self.name)
                        self.error = None
                    elif not _unreachable(error):
                        self.error = error
                if self.error is not None:
                    raise self.error.with_traceback(None)
        return await self.inner.list_dir(key)

    def open_stream(
        self, ref: ObjectRef, offset: int = 0, length: int | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        self._refuse()
        return self.inner.open_stream(ref, offset, length)

    def describe(self, ref: ObjectRef) -> dict[str, str]:
        return self.inner.describe(ref)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _unreachable(exc: ProviderError) -> bool:
    """Timeouts, refused connections, 5xx, 429: the service may come back by itself."""
    return isinstance(exc, TransientError)


async def _start_checks(
    providers: list[Provider], timeout: float, signals: AsyncIterator[int]
) -> tuple[list[Provider], list[str]]:
    """Check every provider's authentication (docs/semantics.md, "Start-up checks").

    Refused (MountError) when every provider fails for good. A provider that fails for good
    is mounted as DownAtStart; one that is only unreachable is mounted as it is (saved listings
    and cached bytes, and it recovers by itself, as an offline start does). Returns the
    providers to mount and one warning per provider that failed. A signal stops the checks."""
    results: dict[str, ProviderError | None] = {}
    stopped: list[int] = []

    async def checks(cancel: trio.CancelScope) -> None:
        results.update(await check_providers(providers, timeout))
        cancel.cancel()

    async def until_signal(cancel: trio.CancelScope) -> None:
        async for signum in signals:
            stopped.append(signum)
            cancel.cancel()
            return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(checks, nursery.cancel_scope)
        nursery.start_soon(until_signal, nursery.cancel_scope)
    if stopped:
        raise MountError(f"stopped by {signal.Signals(stopped[0]).name} while starting")
    failed = {name: exc for name, exc in results.items() if exc is not None}
    down = {name: exc for name, exc in failed.items() if not _unreachable(exc)}
    if providers and len(down) == len(providers):
        for name, exc in down.items():
            log.error("%s is down: %s", name, exc)
        reasons = "; ".join(f"{name}: {exc}" for name, exc in down.items())
        raise MountError(
            f"no provider could authenticate, nothing mounted ({reasons}); check the "
            "credentials and URLs in the config"
        )
    out: list[Provider] = []
    warnings: list[str] = []
    for p in providers:
        error = failed.get(p.name)
        if error is None:
            out.append(p)
            continue
        if p.name in down:
            text = (
                f"{p.name} is down: {error}; /{p.name} answers {_errno_name(error)} until it "
                f"authenticates (checked again at most every {RECHECK_INTERVAL:g} s)"
            )
            out.append(DownAtStart(p, error, timeout))
        else:
            text = (
                f"{p.name} is unreachable: {error}; /{p.name} serves its saved listings and "
                f"cached bytes, the rest answers {_errno_name(error)} until it answers"
            )
            out.append(p)
        log.error("%s", text)
        warnings.append(text)
    return out, warnings


def _tune_readahead(mountpoint: Path) -> None:
    """Let the kernel read ahead further than its 128 KiB default (needs root; best effort)."""
    try:
        dev = os.stat(mountpoint).st_dev
        path = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
        path.write_text(str(READ_AHEAD_KB))
        log.debug("read_ahead_kb of %s set to %d", mountpoint, READ_AHEAD_KB)
    except OSError as exc:
        log.debug("could not raise read_ahead_kb: %s", exc)


async def _terminate_on_signals(signals: AsyncIterator[int]) -> None:
    """After ``pyfuse3.init`` only (terminate() needs a session)."""
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


async def run_mount(
    cfg: MountConfig,
    mountpoint: Path,
    *,
    offline: bool = False,
    allow_non_empty: bool = False,
    ready: Callable[[list[str]], None] | None = None,
) -> None:
    """Mount and serve until unmounted or signalled. ``ready`` is called once the mount is up,
    with one warning per provider that is down."""
    check_mountpoint(mountpoint, allow_non_empty=allow_non_empty)
    # signals from here on: before the mount is up they stop the start, after it they unmount
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        await _run_mount(cfg, mountpoint, offline, ready, signals)


async def _run_mount(
    cfg: MountConfig,
    mountpoint: Path,
    offline: bool,
    ready: Callable[[list[str]], None] | None,
    signals: AsyncIterator[int],
) -> None:
    private_cache_dir(Path(cfg.cache.dir))
    try:
        lock = lock_cache_dir(Path(cfg.cache.dir), mountpoint)
    except CacheDirBusy as exc:
        raise MountError(str(exc)) from None
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(os.close, lock)  # the last thing released: after the unmount
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
        for p in providers:
            stack.push_async_callback(p.aclose)
        warnings: list[str] = []
        if offline:
            log.warning("offline mode: serving saved listings and cached bytes only")
            providers = [OfflineProvider(p) for p in providers]
        else:
            timeout = min(AUTH_CHECK_TIMEOUT, cfg.mount.request_timeout)
            providers, warnings = await _start_checks(providers, timeout, signals)
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
        background = BackgroundFetcher(tree, cache)  # IoTDA exports, one per window
        control = ControlServer(tree, cache, control_path(mountpoint), background)
        fs = Filesystem(tree, cache, control_path=control.path)  # handles, reads, xattrs
        ops = FuseOperations(fs, request_timeout=cfg.mount.request_timeout, xattrs=cfg.mount.xattrs)
        options = set(pyfuse3.default_options)
        options |= {"fsname=fusefs", "subtype=fusefs", "ro", "noatime"}
        async with trio.open_nursery() as nursery:
            await nursery.start(cache.run)
            await nursery.start(control.run)
            await nursery.start(snapshots.run)  # listing saves, off the event loop
            await nursery.start(background.run)
            pyfuse3.init(ops, str(mountpoint), options)
            clean = False
            try:
                log.info(
                    "mounted %s: %s", mountpoint, ", ".join(p.name for p in providers) or "nothing"
                )
                nursery.start_soon(_terminate_on_signals, signals, name="signals")
                if ready is not None:
                    ready(warnings)
                nursery.start_soon(trio.to_thread.run_sync, _tune_readahead, mountpoint)
                await pyfuse3.main()
                clean = True
            finally:
                # after a crash, leave a dead mount (ENOTCONN) rather than an empty directory
                # that a sync tool could read as "everything was deleted" (as s3ql does)
                pyfuse3.close(unmount=clean)
                log.info("unmounted %s" if clean else "daemon failed; %s left dead", mountpoint)
            nursery.cancel_scope.cancel()
