"""A second cache level shared by many hosts (the fleet tier), as the block cache sees it.

The block cache asks the tier before it goes to the cloud and publishes what it downloaded.
It knows only this protocol: the Redis implementation (fusefs/fleet.py) sits behind it, and a
mount without a ``[fleet]`` section has no tier at all (single-host behaviour, unchanged).

Every method is bounded in time and never raises for a tier that is down: ``get``/``wait``
answer None, ``lease`` answers True (this host fetches from the cloud), ``publish`` drops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from fusefs.providers.base import RemoteEntry


@dataclass(frozen=True)
class BlockId:
    """One block of one object version; the block size is part of the name (hosts with
    different block sizes never mix their blocks)."""

    provider: str
    key: str
    version: str
    index: int
    block_size: int


@dataclass(frozen=True)
class WholeId:
    """One object version fetched whole (no Range: IoTDA exports, ROMA archives)."""

    provider: str
    key: str
    version: str


class BlockTier(Protocol):
    def usable(self) -> bool:
        """False while the tier is known to be down (no I/O: a cheap check per fetch)."""
        ...

    async def get(self, block: BlockId, length: int) -> bytes | None:
        """The block's bytes if the tier holds a valid copy of exactly ``length`` bytes."""
        ...

    async def lease(self, block: BlockId) -> bool:
        """True: this host is to download the block (no other host is, and the tier does not
        hold it); False: another host holds the lease or the block was published meanwhile
        (``wait`` for it). A lease ends with ``publish``/``release`` or expires by itself."""
        ...

    async def wait(self, block: BlockId, length: int) -> bytes | None:
        """The block once the leasing host published it; None when it did not in time."""
        ...

    def publish(self, block: BlockId, data: bytes | bytearray) -> None:
        """Share a downloaded block and end this host's lease (thread-safe, never blocks:
        a full queue drops)."""
        ...

    def release(self, block: BlockId) -> None:
        """This host will not publish the block after all (its download failed): end the
        lease so another host can try (thread-safe, never blocks)."""
        ...

    # -- whole objects (sources without Range) ---------------------------------------------------
    async def get_whole(self, obj: WholeId) -> bytes | None:
        """The object's bytes if a host published them complete (verified)."""
        ...

    async def claim_whole(self, obj: WholeId, *, one_shot: bool) -> bool:
        """True: this host downloads the object. For a one-shot source the claim is recorded
        for good before the download starts (no second host ever tries; the host that made it
        may try again, after a failure before any byte); otherwise it is a lease that ends
        with ``publish_whole``/``release_whole`` or expires."""
        ...

    async def wait_whole(self, obj: WholeId) -> bytes | None:
        """The object once the claiming host published it; None when it did not in time (then
        ``holds_whole`` says whether this host took the claim over)."""
        ...

    def holds_whole(self, obj: WholeId) -> bool:
        """This host holds the claim of ``obj`` (it is to publish or release it)."""
        ...

    @property
    def max_whole_bytes(self) -> int:
        """Objects larger than this are not shared whole."""
        ...

    async def publish_whole(self, obj: WholeId, data: bytes) -> None:
        """Share a complete download (only complete objects are ever visible)."""
        ...

    async def release_whole(self, obj: WholeId) -> None:
        """This host's download failed: a lease ends (a one-shot claim stays: it is spent)."""
        ...

    async def has_whole(self, obj: WholeId) -> bool:
        """A host published the object complete (no bytes are read)."""
        ...

    # -- listings of one-shot sources ----------------------------------------------------------
    async def share_entries(self, provider: str, folder: str, entries: list[RemoteEntry]) -> None:
        """Record the entries of a one-shot source's folder: the API stops listing an object
        once it is consumed, and hosts that did not list it before still find it here."""
        ...

    async def shared_entries(self, provider: str, folder: str) -> list[RemoteEntry]:
        """The entries any host recorded for that folder."""
        ...
