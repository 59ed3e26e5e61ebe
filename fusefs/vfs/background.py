"""Background downloads for sources that allow one download per window (IoTDA exports).

Their sizes are in no listing and a ``stat`` must not wait for a window (docs/semantics.md), so
every listed file of unknown size is fetched here, one at a time, in listing order: a mount left
running knows every size after N windows, and every byte lands in the persistent cache (a restart
downloads nothing again). Files asked for by ``fusefs prefetch`` go first; a reader's download
goes ahead of all of this (``DownloadTurns.urgent``), so the background only uses the windows
readers leave free. The provider's listings are refreshed here once per ``dir_ttl`` so that new
exports are found too. A download that fails is tried again after the next listing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio

from fusefs import errors
from fusefs.providers.base import ProviderError
from fusefs.vfs.tree import ROOT_INO

if TYPE_CHECKING:
    from fusefs.cache.block_cache import BlockCache
    from fusefs.vfs.tree import InodeNo, Node, VirtualTree

log = logging.getLogger(__name__)

RETRY_UNLISTED = 30.0  # seconds before a provider whose listing failed is tried again (at most)


class BackgroundFetcher:
    def __init__(self, tree: VirtualTree, cache: BlockCache) -> None:
        self.tree = tree
        self.cache = cache
        self._requested: list[Node] = []  # `fusefs prefetch`: these first, in this order
        self._failed: dict[InodeNo, float] = {}  # ino -> its folder's listed_at when it failed
        self._kick = trio.Event()
        self.current: dict[str, Node] = {}  # provider name -> the file being fetched
        self.pending: dict[str, list[Node]] = {}  # provider name -> what is left, in order
        self.fetched = 0
        self.failures = 0

    def roots(self) -> list[Node]:
        """The provider directories served here (download turns and background_fetch)."""
        out = []
        for _, node in self.tree.node(ROOT_INO).listing:
            p = node.provider
            if getattr(p, "turns", None) is not None and getattr(p, "background_fetch", False):
                out.append(node)
        return out

    def serves(self, node: Node) -> bool:
        return node.provider is not None and any(r.provider is node.provider for r in self.roots())

    def request(self, nodes: Sequence[Node]) -> None:
        """Fetch these next (after what a reader waits for), in this order."""
        ahead = [n for n in nodes if not n.is_dir]
        self._requested = ahead + [n for n in self._requested if n not in ahead]
        self.kick()

    def kick(self) -> None:
        ev, self._kick = self._kick, trio.Event()
        ev.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        roots = self.roots()
        task_status.started()
        if not roots:
            return
        self.tree.on_refresh = lambda _node: self.kick()
        async with trio.open_nursery() as nursery:
            for root in roots:
                nursery.start_soon(self._serve, root, name=f"background {root.name}")

    async def _files(self, root: Node) -> tuple[list[Node], float]:
        """Every file under ``root`` in listing order (listing what is due), and the clock time
        the first of those listings expires."""
        files: list[Node] = []
        expires = math.inf

        async def walk(d: Node) -> None:
            nonlocal expires
            await self.tree.ensure_listing(d)
            expires = min(expires, d.listed_at + self.tree.dir_ttl)
            for _, child in d.listing:
                if child.is_dir:
                    await walk(child)
                else:
                    files.append(child)

        await walk(root)
        return files, expires

    def _todo(self, files: list[Node]) -> list[Node]:
        tree = self.tree
        todo = []
        for n in files:
            tree.refresh_size(n)
            if n.size is not None or n.entry is None or n.detached:
                continue
            parent = tree.nodes.get(n.parent)
            failed_at = self._failed.get(n.ino)
            if failed_at is not None and parent is not None and parent.listed_at == failed_at:
                continue  # failed: tried again after the folder's next listing
            todo.append(n)
        listed = set(todo)
        provider = files[0].provider if files else None
        # requests of this provider that are done (or gone) are dropped
        self._requested = [n for n in self._requested if n in listed or n.provider is not provider]
        first = [n for n in self._requested if n in listed]
        chosen = set(first)
        return first + [n for n in todo if n not in chosen]

    async def _serve(self, root: Node) -> None:
        while True:
            # a listing that is fresh and a download that ended awaited nothing that checks for
            # cancellation: without this, a shutdown could reach the cache's closed nursery
            await trio.lowlevel.checkpoint()
            kick = self._kick
            try:
                files, expires = await self._files(root)
            except (errors.FsError, errors.During) as exc:
                log.info("background downloads of /%s wait for its listing: %s", root.name, exc)
                with trio.move_on_after(min(self.tree.dir_ttl, RETRY_UNLISTED)):
                    await kick.wait()
                continue
            todo = self._todo(files)
            self.pending[root.name] = todo
            if not todo:
                with trio.move_on_after(max(1.0, expires - self.tree.clock())):
                    await kick.wait()
                continue
            await self._fetch(root, todo[0])

    async def _fetch(self, root: Node, node: Node) -> None:
        assert node.provider is not None
        tree = self.tree
        ref = tree.ref(node)
        obj = self.cache.object(node.provider, ref)
        self.current[root.name] = node
        try:
            size = await self.cache.wait_whole(obj)
        except ProviderError as exc:
            if trio.current_effective_deadline() == -math.inf:
                return  # the mount is closing: its downloads were cancelled, not failed
            self.failures += 1
            parent = tree.nodes.get(node.parent)
            self._failed[node.ino] = parent.listed_at if parent is not None else 0.0
            log.warning(
                "background download of %s failed: %s; tried again after the next listing",
                tree.describe(node),
                exc,
            )
        else:
            tree.learn_size(node, ref, size)
            self.fetched += 1
            log.debug("background download of %s done: %d bytes", tree.describe(node), size)
        finally:
            del self.current[root.name]
