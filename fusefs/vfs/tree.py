"""Inodes over provider listings.

Every directory's listing is fetched once per TTL (single-flight) and answers ``lookup``,
``getattr`` and ``readdir`` for all its entries: ``ls -l`` of a folder costs its listing calls and
nothing per entry. When a refresh fails and an older listing exists, the older one is served
(degraded, logged) so that the mount keeps working while a provider is unreachable.

A provider's failure is not converted here: it passes up as ``errors.During(what) from exc``
and the boundary gives it its errno (``errors.fs_error_for``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NewType

import trio

from fusefs import errors
from fusefs.cache.tier import WholeId
from fusefs.naming import map_names
from fusefs.providers.base import (
    EntryKind,
    ObjectRef,
    ProviderError,
    RemoteEntry,
    TransientError,
)

if TYPE_CHECKING:
    from fusefs.cache.block_cache import BlockCache
    from fusefs.providers.base import DownloadQueue, Provider
    from fusefs.vfs.snapshots import ListingStore

log = logging.getLogger(__name__)

InodeNo = NewType("InodeNo", int)
ROOT_INO = InodeNo(1)
StateValue = str | int | bool


@dataclass(eq=False, slots=True)  # 10,000s of them: no per-instance dict
class Node:
    ino: InodeNo
    parent: InodeNo
    name: str
    kind: EntryKind
    provider: Provider | None  # None only for the root
    key: str
    entry: RemoteEntry | None = None
    size: int | None = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    lookups: int = 0
    children: dict[str, InodeNo] | None = None  # None: never listed
    # (name, child) sorted by name, rebuilt by each refresh and never changed in place: readdir
    # hands it out as is (a snapshot for a directory handle) instead of building a new list
    listing: Sequence[tuple[str, Node]] = ()
    listed_at: float = -math.inf
    refreshing: trio.Event | None = None
    version_seen: str | None = None  # version at the last open (keep_cache decision)
    detached: bool = False  # no longer in its parent's listing
    # the FUSE adapter's attributes object for this node: (size, mtime_ns, ctime_ns, object)
    adapter_attrs: tuple[int | None, int, int, object] | None = None

    @property
    def order(self) -> list[str]:
        """The names of ``listing`` (a new list each time)."""
        return [name for name, _ in self.listing]

    @property
    def is_dir(self) -> bool:
        return self.kind is EntryKind.DIR

    @property
    def path(self) -> str:
        return self.key


class VirtualTree:
    def __init__(
        self,
        providers: Sequence[Provider],
        cache: BlockCache,
        *,
        dir_ttl: float,
        snapshots: ListingStore | None = None,
        list_timeout: float = 45.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if dir_ttl <= 0:
            raise ValueError("dir_ttl must be > 0")
        self.cache = cache
        self.snapshots = snapshots
        # a listing that takes longer is given up, so the old listing can still be served
        # within the FUSE request's time limit
        self.list_timeout = list_timeout
        self.dir_ttl = dir_ttl
        self.clock = clock
        # called after a listing was applied (the background fetcher's wake-up)
        self.on_refresh: Callable[[Node], None] | None = None
        # provider name -> (wall clock, error) of its last failed listing, until one succeeds
        # (`fusefs status`: reachable or not since the start checks)
        self.listing_errors: dict[str, tuple[float, str]] = {}
        self._next_ino = 2
        self.nodes: dict[InodeNo, Node] = {}
        root = Node(ROOT_INO, ROOT_INO, "", EntryKind.DIR, None, "")
        root.children = {}
        root.listed_at = math.inf
        self.nodes[ROOT_INO] = root
        now_ns = time.time_ns()
        for p in providers:
            ino = self._new_ino()
            node = Node(
                ino, ROOT_INO, p.name, EntryKind.DIR, p, "", mtime_ns=now_ns, ctime_ns=now_ns
            )
            self.nodes[ino] = node
            root.children[p.name] = ino
        root.listing = [(name, self.nodes[ino]) for name, ino in root.children.items()]
        root.mtime_ns = root.ctime_ns = now_ns

    def _new_ino(self) -> InodeNo:
        ino = InodeNo(self._next_ino)
        self._next_ino += 1
        return ino

    def node(self, ino: int) -> Node:
        try:
            return self.nodes[InodeNo(ino)]
        except KeyError:
            raise errors.NotFound(f"inode {ino} is not known") from None

    def describe(self, node: Node) -> str:
        parts: list[str] = []
        n = node
        while n.ino != ROOT_INO:
            parts.append(n.name)
            n = self.nodes[n.parent]
        return "/" + "/".join(reversed(parts))

    # -- listings ----------------------------------------------------------------------------
    async def ensure_listing(self, node: Node) -> None:
        if not node.is_dir:
            raise errors.NotADirectory(self.describe(node))
        while self.clock() - node.listed_at >= self.dir_ttl:
            if node.refreshing is not None:
                await node.refreshing.wait()
                continue
            node.refreshing = trio.Event()
            try:
                await self._refresh(node)
            finally:
                node.refreshing.set()
                node.refreshing = None
            return

    async def _refresh(self, node: Node) -> None:
        assert node.provider is not None
        provider = node.provider
        what = f"listing {self.describe(node)}"
        t0 = time.perf_counter()
        try:
            with trio.move_on_after(self.list_timeout) as scope:
                entries = await provider.list_dir(node.key)
            if scope.cancelled_caught:
                raise TransientError(f"no answer within {self.list_timeout:.0f} s", call="listing")
        except ProviderError as exc:
            self.listing_errors[provider.name] = (time.time(), str(exc))
            if node.children is not None:
                log.warning(
                    "%s failed (%s); serving the listing from %.0f s ago",
                    what,
                    exc,
                    self.clock() - node.listed_at,
                )
                self._retry_soon(node)
                return
            saved = self.snapshots.load(provider.name, node.key) if self.snapshots else None
            if saved is None:
                raise errors.During(what) from exc
            log.warning(
                "%s failed (%s); serving the listing saved %s (offline)",
                what,
                exc,
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(saved[0])),
            )
            self._apply_listing(node, saved[1])
            self._retry_soon(node)
            return
        t1 = time.perf_counter()
        self.listing_errors.pop(provider.name, None)
        if provider.capabilities.one_shot:
            entries = await self._fleet_entries(provider, node, entries)
            entries = self._keep_consumed(node, entries)
        self._apply_listing(node, entries)
        node.listed_at = self.clock()
        if self.on_refresh is not None:
            self.on_refresh(node)
        if self.snapshots is not None:  # written by a worker thread, not here
            self.snapshots.save_soon(provider.name, node.key, entries)
        log.debug(
            "%s: %d entries, %.3f s from the provider, %.3f s to apply",
            what,
            len(entries),
            t1 - t0,
            time.perf_counter() - t1,
        )

    def _retry_soon(self, node: Node) -> None:
        node.listed_at = self.clock() - self.dir_ttl + min(self.dir_ttl, 5.0)

    async def _fleet_entries(
        self, provider: Provider, node: Node, entries: list[RemoteEntry]
    ) -> list[RemoteEntry]:
        """With a fleet tier: share this listing of a one-shot source, and add the objects other
        hosts listed that a host published whole (the API lists them no more: consumed)."""
        tier = self.cache.tier
        if tier is None or not tier.usable():
            return entries
        listed = {e.remote_id for e in entries}
        extra: list[RemoteEntry] = []
        try:
            with trio.move_on_after(5):  # bounded: the tier's calls are, this loop too
                files = [e for e in entries if e.kind is EntryKind.FILE]
                await tier.share_entries(provider.name, node.key, files)
                for e in await tier.shared_entries(provider.name, node.key):
                    if e.remote_id in listed or e.kind is not EntryKind.FILE:
                        continue
                    if await tier.has_whole(WholeId(provider.name, e.key, e.version)):
                        extra.append(e)
                        listed.add(e.remote_id)
        except Exception:  # the tier's own failures never fail a listing
            log.exception("fleet tier: merging the shared entries of %s failed", node.key)
        return [*entries, *extra]

    def _keep_consumed(self, node: Node, entries: list[RemoteEntry]) -> list[RemoteEntry]:
        """One-shot objects we hold whole stay listed after the API stops listing them."""
        assert node.provider is not None
        if node.children is not None:
            previous = [self.nodes[i].entry for i in node.children.values() if i in self.nodes]
        else:
            saved = self.snapshots.load(node.provider.name, node.key) if self.snapshots else None
            previous = list(saved[1]) if saved else []
        listed = {e.remote_id for e in entries}
        kept = list(entries)
        for old in previous:
            if old is None or old.remote_id in listed or old.kind is not EntryKind.FILE:
                continue
            obj = self.cache.object(
                node.provider, ObjectRef(node.provider.name, old.key, old.version, old.size)
            )
            if self.cache.is_complete(obj):
                kept.append(old)
        return kept

    def _apply_listing(self, node: Node, entries: Sequence[RemoteEntry]) -> None:
        names = map_names([(e.name, e.remote_id) for e in entries])
        old = node.children or {}
        new: dict[str, InodeNo] = {}
        for name, entry in zip(names, entries, strict=True):
            ino = old.get(name)
            child = self.nodes.get(ino) if ino is not None else None
            if (
                child is not None
                and child.entry is not None
                and (child.entry.remote_id != entry.remote_id or child.kind is not entry.kind)
            ):
                self._detach(child)
                child = None
            if child is None:
                ino = self._new_ino()
                child = Node(ino, node.ino, name, entry.kind, node.provider, entry.key)
                self.nodes[ino] = child
            self._update_child(child, entry)
            new[name] = child.ino
        for name, ino in old.items():
            if name not in new:
                gone = self.nodes.get(ino)
                if gone is not None:
                    self._detach(gone)
        node.children = new
        nodes = self.nodes
        node.listing = [(name, nodes[new[name]]) for name in sorted(new)]

    def _update_child(self, child: Node, entry: RemoteEntry) -> None:
        child.entry = entry
        child.key = entry.key
        child.mtime_ns = entry.mtime_ns
        child.ctime_ns = entry.ctime_ns
        if entry.kind is EntryKind.DIR:
            child.size = 0
        elif entry.size is not None:
            child.size = entry.size
        else:  # unknown until fetched whole; maybe learnt earlier (also before a restart)
            assert child.provider is not None
            child.size = self.cache.known_size(child.provider, self.ref(child))

    def _detach(self, node: Node) -> None:
        """The node left its parent's listing: forget it once the kernel has forgotten it."""
        node.detached = True
        self._maybe_drop(node)

    def _maybe_drop(self, node: Node) -> None:
        if node.detached and node.lookups <= 0 and node.ino != ROOT_INO:
            self.nodes.pop(node.ino, None)
            for ino in (node.children or {}).values():
                child = self.nodes.get(ino)
                if child is not None:
                    self._detach(child)
            node.children = None
            node.listing = ()

    # -- operations (the Filesystem facade's and the control socket's) --------------------
    async def lookup(self, parent_ino: int, name: str) -> Node:
        parent = self.node(parent_ino)
        if name == ".":
            return parent
        if name == "..":
            return self.nodes[parent.parent]
        await self.ensure_listing(parent)
        assert parent.children is not None
        ino = parent.children.get(name)
        if ino is None:
            raise errors.NotFound(f"{self.describe(parent)}/{name}")
        return self.nodes[ino]

    async def getattr(self, ino: int) -> Node:
        node = self.node(ino)
        if node.ino != ROOT_INO and not node.detached:
            parent = self.nodes[node.parent]
            if parent.provider is not None:
                try:
                    await self.ensure_listing(parent)
                except (errors.FsError, errors.During) as exc:
                    log.debug("revalidating %s failed: %s", self.describe(node), exc)
        return node

    async def readdir(self, ino: int) -> Sequence[tuple[str, Node]]:
        """The directory's entries in order (shared: callers must not change it)."""
        node = self.node(ino)
        await self.ensure_listing(node)
        assert node.children is not None
        return node.listing

    def remember(self, node: Node) -> None:
        node.lookups += 1

    def forget(self, items: Sequence[tuple[int, int]]) -> None:
        for ino, n in items:
            node = self.nodes.get(InodeNo(ino))
            if node is None:
                continue
            node.lookups -= n
            self._maybe_drop(node)

    def state(self, node: Node) -> dict[str, StateValue]:
        """What the mount knows about one entry: `fusefs info`, and the user.fusefs.* xattrs.

        Answered from memory and the cache index: never a remote call, never a download.
        """
        if node.provider is None or node.entry is None:
            return {}
        e = node.entry
        out: dict[str, StateValue] = {
            "provider": node.provider.name,
            "remote_id": e.remote_id,
            "remote_name": e.name,
            "version": e.version,
        }
        if e.md5:
            out["md5"] = e.md5
        if not node.is_dir:
            self.refresh_size(node)
            obj = self.cache.object(node.provider, self.ref(node), remember=False)
            cached = self.cache.cached_bytes(obj)
            size = obj.size
            out["cached_bytes"] = cached
            out["cached_percent"] = 100 if size == 0 else (cached * 100 // size if size else 0)
            out["pinned"] = obj.pinned
            out["size_known"] = node.size is not None
            out.update(node.provider.describe(obj.ref))
        out.update(e.extra)
        return out

    def ref(self, node: Node) -> ObjectRef:
        assert node.provider is not None and node.entry is not None
        e = node.entry
        return ObjectRef(node.provider.name, e.key, e.version, e.size)

    # -- sizes of whole-object sources -------------------------------------------------------
    def lazy_size(self, node: Node) -> bool:
        """An unknown size is shown as 0 rather than waited for: the source allows one
        download per window (IoTDA), so no stat may wait for one (docs/semantics.md)."""
        p = node.provider
        return p is not None and p.capabilities.download_interval > 0

    def refresh_size(self, node: Node) -> None:
        """Take a size learnt by any download (a reader's, the background's, a prefetch)."""
        if node.size is None and not node.is_dir and node.entry is not None:
            assert node.provider is not None
            node.size = self.cache.known_size(node.provider, self.ref(node))

    def learn_size(self, node: Node, ref: ObjectRef, size: int) -> None:
        if self.nodes.get(node.ino) is node and self.ref(node) == ref:
            node.size = size  # (not when replaced by a newer version meanwhile)

    def turns(self, node: Node) -> DownloadQueue | None:
        return getattr(node.provider, "turns", None) if node.provider is not None else None

    async def resolve_size(self, node: Node) -> None:
        """For sources without a size: fetch whole (single-flight) so stat never shows 0 —
        except where one download per window is allowed: there the size stays unknown (0)."""
        if node.is_dir or node.size is not None:
            return
        self.refresh_size(node)
        if node.size is not None or self.lazy_size(node):
            return
        await self._download(node)

    async def _download(self, node: Node) -> None:
        assert node.provider is not None
        ref = self.ref(node)
        obj = self.cache.object(node.provider, ref)
        try:
            size = await self.cache.wait_whole(obj)
        except ProviderError as exc:
            raise errors.During(f"downloading {self.describe(node)}") from exc
        if self.nodes.get(node.ino) is not node:
            raise errors.NotFound(f"{self.describe(node)} disappeared while it was downloaded")
        self.learn_size(node, ref, size)

    async def download_for_reader(self, node: Node, keep_alive: Callable[[float], None]) -> None:
        """``open`` of a file whose size is unknown: wait until it is downloaded whole.

        Where downloads take turns (IoTDA), the download goes ahead of background ones, and
        while it waits for its turn every move of the queue calls ``keep_alive(interval)``:
        waiting in line is progress, the request's time limit counts from the last move. A
        download that fails with a transient error (a cut body, retries used up) is started
        again, at most ``READER_RESTARTS`` times."""
        if node.is_dir or node.size is not None:
            return
        self.refresh_size(node)
        turns = self.turns(node)
        if node.size is not None:
            return
        if turns is None:  # no queue (offline, or no window): as any request
            await self._download(node)
            return
        assert node.provider is not None
        ref = self.ref(node)
        obj = self.cache.object(node.provider, ref)
        restarts = 0
        with turns.urgent(ref.key):
            while True:
                wf = self.cache.start_whole(obj)
                while not wf.done.is_set():
                    if turns.queued(ref.key):
                        keep_alive(turns.interval)
                    await _wait_any(wf.done, turns.moved)
                if wf.error is None:
                    break
                err = wf.error
                if not isinstance(err, TransientError) or restarts >= READER_RESTARTS:
                    if isinstance(err, ProviderError):
                        raise errors.During(f"downloading {self.describe(node)}") from err
                    raise err
                restarts += 1
                await trio.lowlevel.checkpoint()  # (not into a cache that is shutting down)
                log.warning(
                    "downloading %s failed (%s); trying again (%d of %d)",
                    self.describe(node),
                    err,
                    restarts,
                    READER_RESTARTS,
                )
        if self.nodes.get(node.ino) is not node:
            raise errors.NotFound(f"{self.describe(node)} disappeared while it was downloaded")
        assert obj.size is not None
        self.learn_size(node, ref, obj.size)


READER_RESTARTS = 2


async def _wait_any(*events: trio.Event) -> None:
    """Until one of the events is set."""
    if any(e.is_set() for e in events):
        return

    async def wait(e: trio.Event, scope: trio.CancelScope) -> None:
        await e.wait()
        scope.cancel()

    async with trio.open_nursery() as nursery:
        for e in events:
            nursery.start_soon(wait, e, nursery.cancel_scope)
