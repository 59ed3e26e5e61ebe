"""The provider contract: what the virtual tree and the block cache need from a cloud API.

Exception tree (providers raise these; ``errors.fs_error_for`` converts them to ``FsError``)::

    ProviderError
      ObjectNotFound      the object or folder is gone (404, 99404, 13000309, IOTDA.014802, ...)
      AuthError           credentials rejected even after one fresh token
      VersionMismatch     the object changed under an open handle
      TransientError      timeouts, resets, 5xx, 429 (retry_after set when the server said so)
      Unavailable         the service cannot be reached at all (connection refused / DNS)
      OneShotConsumed     a one-shot object was already downloaded (ROMA); it can never be fetched
      ProtocolError       the server answered something the API does not allow
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from fusefs.logs import excerpt

if TYPE_CHECKING:
    import trio

#: The longest message a ProviderError keeps (server excerpts inside are capped shorter).
MAX_MESSAGE = 2000


class EntryKind(enum.Enum):
    FILE = "file"
    DIR = "dir"


@dataclass(frozen=True, slots=True)
class RemoteEntry:
    """One child of a remote directory, exactly as the API named it."""

    name: str  # remote name, raw (the vfs applies the name mapping rule of docs/world.md)
    remote_id: str  # stable id: decides duplicates; shown as user.fusefs.remote_id
    kind: EntryKind
    key: str  # provider-opaque handle: passed back to list_dir (DIR) or inside ObjectRef (FILE)
    size: int | None  # bytes; 0 for DIR; None = unknown until fetched whole (IoTDA, ROMA)
    mtime_ns: int
    ctime_ns: int
    version: str  # content version (md5, editedTime, ...); "" if the API gives none
    md5: str | None = None
    extra: dict[str, str] = field(default_factory=dict)  # shown as user.fusefs.<k> xattrs


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """What cached blocks belong to: (provider, key, version) names one immutable byte string."""

    provider: str
    key: str
    version: str
    size: int | None


@dataclass(frozen=True, slots=True)
class Capabilities:
    ranged_reads: bool = True  # False: fetch whole, streaming, never with Range
    # False: listings give no size (RemoteEntry.size is None), learnt from the first whole
    # fetch. fusefs itself goes by ``RemoteEntry.size is None``; this states it for a provider
    # as a whole (the contract tests and the test fakes use it)
    size_known: bool = True
    one_shot: bool = False  # True: can be downloaded once only -> pin, never evict
    # the cross-file read-ahead's downloads at once (vfs/sequence.py), and its first window;
    # a reader's own reads come on top and are not held back by it
    max_concurrency: int = 4
    # > 0: at most one whole download per this many seconds (IoTDA): an unknown size is shown
    # as 0 (user.fusefs.size_known=0) instead of being waited for; see providers/window.py
    download_interval: float = 0.0


class RangeSink(Protocol):
    """Where a ranged download puts its bytes, in order, from a worker thread.

    The downloader asks for ``buffer(pos)`` (a writable view starting at absolute byte ``pos``),
    receives into it, then calls ``received(pos, n)``. After a cut it resumes at the byte
    reached: the sink keeps what it was given. The sink writes to disk and notifies the event
    loop itself; it may raise ``Cancelled`` (below) to stop the download.
    """

    def buffer(self, pos: int) -> memoryview: ...

    def received(self, pos: int, n: int) -> None: ...


class DownloadQueue(Protocol):
    """The turns a provider's downloads wait in (``Provider.turns``; providers/window.py)."""

    interval: float  # seconds between two download starts
    holder: str | None  # the key whose download holds the turn now

    @property
    def moved(self) -> trio.Event:
        """Set at the queue's next change."""
        ...

    def queue(self) -> list[str]:
        """The keys waiting, in the order they will get their turns."""
        ...

    def queued(self, key: str) -> bool: ...

    def eta(self, position: int) -> float:
        """Seconds until the ``position``-th next turn (0: the next)."""
        ...

    def urgent(self, key: str) -> AbstractContextManager[None]:
        """While inside, a reader waits for ``key``: its download goes first."""
        ...


class Provider(Protocol):
    name: str  # directory name under the mount root: enos, koodrive, iotda, roma
    capabilities: Capabilities

    async def list_dir(self, key: str) -> list[RemoteEntry]:
        """Complete listing of a directory ("" = the provider's root); pages internally."""
        ...

    def open_stream(
        self, ref: ObjectRef, offset: int = 0, length: int | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Bytes ``[offset, offset+length)`` of the object (``length=None``: to the end).

        Ranged providers resume internally after a cut or an expired link, so the iterator yields
        contiguous bytes or raises ``ProviderError``. Non-ranged providers require ``offset == 0``
        and ``length is None`` and yield the whole object.
        """
        ...

    # Optional, for ranged providers: ``async fetch_range(ref, offset, length, sink) -> None``
    # receives the bytes into ``sink`` (a RangeSink) off the event loop; the cache uses it when
    # present and falls back to ``open_stream`` otherwise.
    #
    # Optional: ``async prepare_reads(refs: Sequence[ObjectRef]) -> None``: these objects will
    # probably be read soon, in this order (a folder read file after file); do ahead what each
    # read would otherwise do alone (KooDrive: fetch their download links, ≤100 per call). May
    # raise ``ProviderError``; the reads themselves must still work without it.
    #
    # Optional, with ``capabilities.download_interval``: ``turns`` (a ``DownloadQueue``),
    # the queue every download of the provider waits in, and ``background_fetch: bool``: the
    # vfs fetches every listed object of unknown size in the background (vfs/background.py).
    #
    # Optional: ``async check_auth() -> None``: the mount's start check (mount.py): authenticate
    # with the cheapest call there is (a token, one listing page) and raise its
    # ``ProviderError``; without it the start check lists the provider's root.

    def describe(self, ref: ObjectRef) -> dict[str, str]:
        """Live per-object state for ``user.fusefs.*`` xattrs (e.g. a download link's expiry)."""
        ...

    async def aclose(self) -> None: ...


class ProviderError(Exception):
    """Base of every error a provider raises. ``call`` names the remote call."""

    def __init__(self, message: str, *, call: str = "") -> None:
        # messages carry server text (error bodies, names): one line, capped (fusefs.logs)
        super().__init__(excerpt(message, MAX_MESSAGE))
        self.call = excerpt(call, 100)

    def __str__(self) -> str:
        msg = super().__str__()
        return f"{self.call}: {msg}" if self.call else msg


class ObjectNotFound(ProviderError):
    pass


class AuthError(ProviderError):
    pass


class VersionMismatch(ProviderError):
    pass


class TransientError(ProviderError):
    """Worth another try. ``throttled``: the service said "too many requests" (429, a throttle
    code), so the wait before that try is a rate-limit wait (``fusefs_rate_limit_wait_seconds``)."""

    def __init__(
        self,
        message: str,
        *,
        call: str = "",
        retry_after: float | None = None,
        throttled: bool = False,
    ) -> None:
        super().__init__(message, call=call)
        self.retry_after = retry_after
        self.throttled = throttled


class Unavailable(TransientError):
    pass


class OneShotConsumed(ProviderError):
    pass


class ProtocolError(ProviderError):
    pass
