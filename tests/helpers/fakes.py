"""A fake provider for cache tests: deterministic bytes, counted and optionally slow requests."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import trio

from fusefs.providers.base import Capabilities, ObjectRef, ProtocolError, RemoteEntry


def object_bytes(key: str, size: int) -> bytes:
    out = bytearray()
    i = 0
    while len(out) < size:
        out += hashlib.sha256(f"{key}:{i}".encode()).digest()
        i += 1
    return bytes(out[:size])


@dataclass
class FakeProvider:
    name: str = "fake"
    capabilities: Capabilities = field(default_factory=Capabilities)
    objects: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, int, int | None]] = field(default_factory=list)
    delay: float = 0.0
    chunk: int = 65536
    fail_after: int | None = None  # cut streams after this many bytes

    def add(self, key: str, size: int) -> ObjectRef:
        self.objects[key] = object_bytes(key, size)
        return ObjectRef(self.name, key, "v1", size if self.capabilities.size_known else None)

    async def list_dir(self, key: str) -> list[RemoteEntry]:
        return []

    @contextlib.asynccontextmanager
    async def open_stream(
        self, ref: ObjectRef, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        self.requests.append((ref.key, offset, length))
        data = self.objects[ref.key]
        end = len(data) if length is None else offset + length

        async def gen() -> AsyncIterator[bytes]:
            if self.delay:
                await trio.sleep(self.delay)
            sent = 0
            for pos in range(offset, end, self.chunk):
                if self.fail_after is not None and sent >= self.fail_after:
                    raise ProtocolError("connection cut", call="fake.download")
                piece = data[pos : min(pos + self.chunk, end)]
                sent += len(piece)
                yield piece
                await trio.lowlevel.checkpoint()

        yield gen()

    def describe(self, ref: ObjectRef) -> dict[str, str]:
        return {}

    async def aclose(self) -> None:
        pass
