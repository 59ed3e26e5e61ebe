"""`fusefs mount --offline`: a provider that never touches the network.

Listings then come from the snapshots the last online mount saved, bytes from the cache; anything
else fails at once with ``Unavailable`` (ENETDOWN), exactly as when the service is unreachable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING

from fusefs.providers.base import RemoteEntry, Unavailable

if TYPE_CHECKING:
    from fusefs.providers.base import Capabilities, ObjectRef, Provider


class OfflineProvider:
    def __init__(self, inner: Provider) -> None:
        self.inner = inner
        self.name: str = inner.name
        self.capabilities: Capabilities = inner.capabilities

    async def list_dir(self, key: str) -> list[RemoteEntry]:
        raise Unavailable("offline mode: listing from the saved snapshot only", call=self.name)

    def open_stream(
        self, ref: ObjectRef, offset: int = 0, length: int | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self._fail(ref)

    @asynccontextmanager
    async def _fail(self, ref: ObjectRef) -> AsyncIterator[AsyncIterator[bytes]]:
        raise Unavailable(f"offline mode: {ref.key} is not cached", call=self.name)
        yield  # pragma: no cover

    def describe(self, ref: ObjectRef) -> dict[str, str]:
        return self.inner.describe(ref)

    async def aclose(self) -> None:
        await self.inner.aclose()
