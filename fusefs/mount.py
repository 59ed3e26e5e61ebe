"""Composition root of the daemon: http client, providers, cache, tree, FUSE adapter, nursery."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import logging
import os
import signal
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pyfuse3
import trio

from fusefs import errors, metrics, sdnotify
from fusefs.cache.block_cache import BlockCache
from fusefs.cache.store import CacheDirBusy, lock_cache_dir
from fusefs.config import HttpConfig
from fusefs.control import (
    FSTYPE,
    ControlServer,
    DaemonState,
    RecentWarnings,
    control_path,
    mount_table,
)
from fusefs.fuse_ops import FuseOperations
from fusefs.metrics import Metrics
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
    from fusefs.fleet import CacheTier
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
) -> tuple[list[Provider], list[str], dict[str, ProviderError | None]]:
    """Check every provider's authentication (docs/semantics.md, "Start-up checks").

    Refused (MountError) when every provider fails for good. A provider that fails for good
    is mounted as DownAtStart; one that is only unreachable is mounted as it is (saved listings
    and cached bytes, and it recovers by itself, as an offline start does). Returns the
    providers to mount, one warning per provider that failed and each provider's result. A
    stop signal (SIGTERM, SIGINT; not SIGHUP) stops the checks."""
    results: dict[str, ProviderError | None] = {}
    stopped: list[int] = []

    async def checks(cancel: trio.CancelScope) -> None:
        results.update(await check_providers(providers, timeout))
        cancel.cancel()

    async def until_signal(cancel: trio.CancelScope) -> None:
        async for signum in signals:
            if signum == signal.SIGHUP:  # a reload: nothing to reload yet
                log.info("received SIGHUP while starting: ignored")
                continue
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
    return out, warnings, results


def _tune_readahead(mountpoint: Path) -> None:
    """Let the kernel read ahead further than its 128 KiB default (needs root; best effort)."""
    try:
        dev = os.stat(mountpoint).st_dev
        path = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
        path.write_text(str(READ_AHEAD_KB))
        log.debug("read_ahead_kb of %s set to %d", mountpoint, READ_AHEAD_KB)
    except OSError as exc:
        log.debug("could not raise read_ahead_kb: %s", exc)


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


STATUS_EVERY = 10.0  # seconds between checks of systemd's status line


class _Lifecycle:
    """The daemon's signals once the start checks are done, and what it tells systemd.

    SIGTERM/SIGINT: before ``pyfuse3.init`` they stop the start (``stop_before_mount``), after
    it they unmount. SIGHUP reloads (``Reloader``) and never unmounts. systemd (when
    ``$NOTIFY_SOCKET`` is set) gets READY=1 once the mount answers, a STATUS= line, and
    STOPPING=1 once the daemon is going down."""

    def __init__(self, mountpoint: Path, reloader: Reloader, state: DaemonState) -> None:
        self.mountpoint = mountpoint
        self.reloader = reloader
        self.state = state
        self.stopped_by: signal.Signals | None = None
        self.mounted = False
        self._stopping_sent = False

    async def run(self, signals: AsyncIterator[int], *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        async for signum in signals:
            sig = signal.Signals(signum)
            if sig == signal.SIGHUP:
                log.info("received SIGHUP: reopening the log file, rereading the config")
                self.reloader.reload()
                if self.mounted:
                    sdnotify.notify(f"STATUS={self.status_text()}")
                continue
            if self.stopped_by is not None:
                continue  # already on the way down
            self.stopped_by = sig
            if self.mounted:
                log.info("received %s, unmounting", sig.name)
                self.stopping()
                pyfuse3.terminate()
            else:
                log.info("received %s while starting: stopping before the mount", sig.name)

    def stop_before_mount(self) -> None:
        """A stop signal that came since the start checks ends the start before
        ``pyfuse3.init`` (checked right before it), rather than after a mount that would be
        unmounted at once: MountError."""
        if self.stopped_by is not None:
            raise MountError(f"stopped by {self.stopped_by.name} while starting")

    def status_text(self) -> str:
        providers = self.state.providers
        down = sum(
            1
            for p in providers
            if isinstance(getattr(p, "error", None), ProviderError)
            or p.name in self.reloader.tree.listing_errors
        )
        text = f"mounted at {self.mountpoint}; {len(providers)} providers, {down} down"
        return text + (" (offline)" if self.state.offline else "")

    async def announce(
        self, ready: Callable[[list[str]], None] | None, warnings: list[str]
    ) -> None:
        """Once the mount answers (statfs always reaches the daemon): the starter and systemd
        are told it is up. Run while ``pyfuse3.main`` serves."""
        try:
            await trio.to_thread.run_sync(os.statvfs, self.mountpoint, abandon_on_cancel=True)
        except OSError as exc:  # it answered, if only with an error: the mount is up
            log.warning("the new mount %s answers statfs with %s", self.mountpoint, exc)
        if ready is not None:
            ready(warnings)
        sdnotify.notify("READY=1", f"STATUS={self.status_text()}")

    async def keep_status(self, every: float = STATUS_EVERY) -> None:
        """systemd's status line follows providers going down and up (`systemctl status`)."""
        last = self.status_text()
        while True:
            await trio.sleep(every)
            text = self.status_text()
            if text != last and not self._stopping_sent:
                sdnotify.notify(f"STATUS={text}")
                last = text

    def stopping(self) -> None:
        if not self._stopping_sent:
            self._stopping_sent = True
            sdnotify.notify("STOPPING=1", f"STATUS=unmounting {self.mountpoint}")


RELOADABLE = ("dir_ttl", "log_level")  # [mount] keys SIGHUP applies (docs/semantics.md)


def reopen_log_files() -> int:
    """Reopen every log file the root logger writes to (after logrotate moved it away)."""
    n = 0
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.acquire()
            try:
                if handler.stream is not None:
                    handler.stream.close()
                handler.stream = handler._open()
                n += 1
            finally:
                handler.release()
    return n


class Reloader:
    """SIGHUP: reopen the log file and reread the config; apply its reloadable keys (dir_ttl,
    log_level), log what changed. A config that no longer loads is logged and ignored."""

    def __init__(
        self, cfg: MountConfig, load: Callable[[], MountConfig] | None, tree: VirtualTree
    ) -> None:
        self.cfg = cfg
        self.load = load
        self.tree = tree

    def reload(self) -> None:
        reopen_log_files()
        if self.load is None:
            log.warning("SIGHUP: no config file to reread")
            return
        try:
            new = self.load()
        except Exception as exc:  # a reload never takes the mount down
            log.error("SIGHUP: the config no longer loads (%s); keeping the running one", exc)
            return
        old = self.cfg
        changed: list[str] = []
        if new.mount.dir_ttl != old.mount.dir_ttl:
            self.tree.dir_ttl = new.mount.dir_ttl
            changed.append(f"dir_ttl {old.mount.dir_ttl:g} -> {new.mount.dir_ttl:g}")
        if new.mount.log_level != old.mount.log_level:
            logging.getLogger().setLevel(new.mount.log_level.upper())
            changed.append(f"log_level {old.mount.log_level} -> {new.mount.log_level}")
        later = _changed_keys(old, new)
        # what was applied is kept; the rest stays as it was mounted until the next mount
        self.cfg = _with_mount(old, dir_ttl=new.mount.dir_ttl, log_level=new.mount.log_level)
        if changed:
            log.warning("SIGHUP: config reloaded: %s", ", ".join(changed))
        else:
            log.info("SIGHUP: config reread, no reloadable key changed")
        if later:
            log.warning(
                "SIGHUP: changed, takes effect at the next mount: %s", ", ".join(sorted(later))
            )


def _with_mount(cfg: MountConfig, **changes: Any) -> MountConfig:
    return dataclasses.replace(cfg, mount=dataclasses.replace(cfg.mount, **changes))


def _changed_keys(old: MountConfig, new: MountConfig) -> list[str]:
    """Keys outside RELOADABLE whose value differs (``[section] key``, or a whole provider
    section)."""
    out: list[str] = []
    for name in ("mount", "cache", "http", "metrics"):
        a, b = getattr(old, name, None), getattr(new, name, None)
        if a is None or b is None or a == b:
            continue
        for f in dataclasses.fields(a):
            if name == "mount" and f.name in RELOADABLE:
                continue
            if getattr(a, f.name) != getattr(b, f.name):
                out.append(f"[{name}] {f.name}")
    for section in set(old.sections) | set(new.sections):
        if old.sections.get(section) != new.sections.get(section):
            out.append(f"[{section}]")
    return out


def _cache_figures(cache: BlockCache) -> Callable[[], Mapping[str, int]]:
    """What the metrics endpoint reads from the cache at each scrape."""
    return cache.statistics


async def _start_fleet(cfg: MountConfig, stack: contextlib.AsyncExitStack) -> CacheTier | None:
    """The fleet's shared tier when ``[fleet]`` is configured (docs/fleet.md). A Redis that
    does not answer now is not an error: the tier comes back by itself once it does."""
    f = cfg.fleet
    if f is None:
        return None
    from fusefs.fleet import CacheTier, FleetConfig, FleetConfigError, FleetTier

    try:
        tier = FleetTier(
            FleetConfig(
                url=f.url,
                key_prefix=f.key_prefix,
                username=f.username.reveal() if f.username else None,
                password=f.password.reveal() if f.password else None,
                tls_ca_file=str(f.tls_ca_file) if f.tls_ca_file else None,
                lease_seconds=f.lease_seconds,
                lease_wait=f.lease_wait,
                block_ttl=f.block_ttl,
                share_tokens=f.share_tokens,
            ),
            block_size=cfg.cache.block_size,
        )
    except FleetConfigError as exc:
        raise MountError(f"[fleet]: {exc}") from None
    stack.push_async_callback(tier.aclose)
    if await tier.ping():
        log.info("fleet tier: %r", tier)
    else:
        log.warning("fleet tier %r does not answer; reading from the clouds until it does", tier)
    return CacheTier(tier)


def fuse_options(cfg: MountConfig) -> set[str]:
    """pyfuse3.init's options: read-only, and who may use the mount (docs/semantics.md)."""
    m = cfg.mount
    # the source column of the mount table is the config file, as in the fstab line that
    # mounted it (absolute, symlinks kept): `mount -a` then sees the line is mounted
    source = (
        os.path.abspath(cfg.path).replace("\\", "\\\\").replace(",", "\\,")
        if cfg.path
        else "fusefs"
    )
    options = {f"fsname={source}", "subtype=fusefs", "ro", "noatime"}
    if m.allow_other:
        options.add("allow_other")
    if m.allow_other if m.default_permissions is None else m.default_permissions:
        options.add("default_permissions")  # the kernel checks the modes and owners shown
    return options


async def run_mount(
    cfg: MountConfig,
    mountpoint: Path,
    *,
    offline: bool = False,
    allow_non_empty: bool = False,
    ready: Callable[[list[str]], None] | None = None,
    reload: Callable[[], MountConfig] | None = None,
) -> None:
    """Mount and serve until unmounted or signalled. ``ready`` is called once the mount
    answers, with one warning per provider that is down. ``reload`` rereads the config on
    SIGHUP (default: the file ``cfg`` came from, without command-line overrides)."""
    check_mountpoint(mountpoint, allow_non_empty=allow_non_empty)
    if reload is None and cfg.path is not None:
        from fusefs.providers.registry import load_config

        reload = functools.partial(load_config, cfg.path)
    # signals from here on: before the mount is up they stop the start, after it they unmount
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        recent = RecentWarnings()
        logging.getLogger().addHandler(recent)
        try:
            await _run_mount(cfg, mountpoint, offline, ready, signals, reload, recent)
        finally:
            logging.getLogger().removeHandler(recent)


def _start_metrics(cfg: MountConfig, stack: contextlib.AsyncExitStack) -> Metrics | None:
    """Record events from now on when ``[metrics] address`` is set (served once the cache is)."""
    if cfg.metrics.address is None:
        return None
    m = Metrics()
    metrics.install(m)
    stack.callback(metrics.install, None)
    stack.callback(m.close)
    return m


async def _run_mount(
    cfg: MountConfig,
    mountpoint: Path,
    offline: bool,
    ready: Callable[[list[str]], None] | None,
    signals: AsyncIterator[int],
    reload: Callable[[], MountConfig] | None,
    recent: RecentWarnings,
) -> None:
    private_cache_dir(Path(cfg.cache.dir))
    try:
        lock = lock_cache_dir(Path(cfg.cache.dir), mountpoint)
    except CacheDirBusy as exc:
        raise MountError(str(exc)) from None
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(os.close, lock)  # the last thing released: after the unmount
        metrics_on = _start_metrics(cfg, stack)
        client = await stack.enter_async_context(make_http_client(cfg.http))
        bulk = BulkClient(
            connect_timeout=cfg.http.connect_timeout,
            read_timeout=cfg.http.read_timeout,
            ca_bundle=str(cfg.http.ca_bundle) if cfg.http.ca_bundle else None,
            proxy=cfg.http.proxy,
            user_agent="fusefs/0.1",
        )
        stack.callback(bulk.close)
        fleet = await _start_fleet(cfg, stack)
        providers: list[Provider] = list(
            build_providers(
                cfg,
                client,
                bulk=bulk,
                window_gate=fleet.window if fleet is not None else None,
                token_share=fleet.token_share if fleet is not None else None,
            )
        )
        for p in providers:
            stack.push_async_callback(p.aclose)
        warnings: list[str] = []
        state = DaemonState(mountpoint, recent=recent, offline=offline)
        results: dict[str, ProviderError | None] = {}
        if offline:
            log.warning("offline mode: serving saved listings and cached bytes only")
            providers = [OfflineProvider(p) for p in providers]
        else:
            timeout = min(AUTH_CHECK_TIMEOUT, cfg.mount.request_timeout)
            providers, warnings, results = await _start_checks(providers, timeout, signals)
        state.providers = providers
        state.start_checks = {n: None if e is None else str(e) for n, e in results.items()}
        cache = BlockCache(
            Path(cfg.cache.dir),
            block_size=cfg.cache.block_size,
            max_bytes=cfg.cache.max_size,
            min_free_ratio=cfg.cache.min_free_ratio,
            memory_budget=cfg.cache.memory_budget,
            tier=fleet,
        )
        if metrics_on is not None:
            assert cfg.metrics.address is not None
            metrics_on.watch_cache(_cache_figures(cache))
            try:
                host, port = metrics_on.serve(*cfg.metrics.address)
            except OSError as exc:
                where = f"{cfg.metrics.address[0]}:{cfg.metrics.address[1]}"
                raise MountError(
                    f"cannot serve metrics on {where}: {exc.strerror or exc}; pick another "
                    "[metrics] address"
                ) from None
            state.metrics = f"http://{host}:{port}/metrics"
            log.info("metrics at %s", state.metrics)
        snapshots = ListingStore(Path(cfg.cache.dir))
        tree = VirtualTree(
            providers,
            cache,
            dir_ttl=cfg.mount.dir_ttl,
            snapshots=snapshots,
            list_timeout=cfg.mount.request_timeout * 0.75,
        )
        for name, failure in results.items():  # unreachable at start: until a listing works
            if failure is not None and _unreachable(failure):
                tree.listing_errors[name] = (state.started_at, str(failure))
        background = BackgroundFetcher(tree, cache)  # IoTDA exports, one per window
        # derived from the mountpoint alone: clients find it without xattrs (control.py)
        control = ControlServer(tree, cache, control_path(mountpoint), background, state)
        fs = Filesystem(tree, cache, control_path=control.path)  # handles, reads, xattrs
        m = cfg.mount
        ops = FuseOperations(
            fs,
            request_timeout=m.request_timeout,
            xattrs=m.xattrs,
            uid=m.uid,
            gid=m.gid,
            file_mode=m.file_mode,
            dir_mode=m.dir_mode,
            read_latency=metrics.read_latency if metrics_on is not None else None,
        )
        options = set(pyfuse3.default_options) - {"default_permissions"} | fuse_options(cfg)
        life = _Lifecycle(mountpoint, Reloader(cfg, reload, tree), state)
        init_error: RuntimeError | None = None
        # MountError and pyfuse3.init's RuntimeError are raised after the nursery: inside it
        # they would reach the CLI wrapped in an ExceptionGroup
        async with trio.open_nursery() as nursery:
            await nursery.start(life.run, signals)
            if fleet is not None:
                await nursery.start(fleet.run)
            await nursery.start(cache.run)
            await nursery.start(control.run)
            await nursery.start(snapshots.run)  # listing saves, off the event loop
            await nursery.start(background.run)
            if life.stopped_by is None:  # no checkpoint from here to the mount
                try:
                    pyfuse3.init(ops, str(mountpoint), options)
                except RuntimeError as exc:
                    init_error = exc
                else:
                    life.mounted = True
                    await _serve(mountpoint, providers, life, ready, warnings, nursery)
            nursery.cancel_scope.cancel()
        if init_error is not None:
            raise init_error
        if not life.mounted:
            life.stop_before_mount()  # a stop signal came after the checks: MountError


async def _serve(
    mountpoint: Path,
    providers: list[Provider],
    life: _Lifecycle,
    ready: Callable[[list[str]], None] | None,
    warnings: list[str],
    nursery: trio.Nursery,
) -> None:
    """From ``pyfuse3.init`` on: serve until unmounted, then close the FUSE session."""
    clean = False
    try:
        log.info("mounted %s: %s", mountpoint, ", ".join(p.name for p in providers) or "nothing")
        nursery.start_soon(life.announce, ready, warnings, name="announce")
        if os.environ.get("NOTIFY_SOCKET"):
            nursery.start_soon(life.keep_status, name="systemd status")
        nursery.start_soon(trio.to_thread.run_sync, _tune_readahead, mountpoint)
        await pyfuse3.main()
        clean = True
    finally:
        life.stopping()
        # after a crash, leave a dead mount (ENOTCONN) rather than an empty directory that a
        # sync tool could read as "everything was deleted" (as s3ql does)
        pyfuse3.close(unmount=clean)
        log.info("unmounted %s" if clean else "daemon failed; %s left dead", mountpoint)
