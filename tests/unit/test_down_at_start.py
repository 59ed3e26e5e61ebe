"""A provider whose credentials were rejected at start (mount.DownAtStart): nothing reaches the
service with them — no listing, no download, no link batch, no background fetch — until a
re-check passes."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.lowlevel

from fusefs import mount
from fusefs.providers.base import AuthError, Capabilities, ObjectRef, RemoteEntry


class Recorder:
    """A provider that records every call that would reach the service."""

    name = "rec"
    capabilities = Capabilities()
    background_fetch = True
    turns = object()

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.accept = False

    async def check_auth(self) -> None:
        self.calls.append("check_auth")
        if not self.accept:
            raise AuthError("rejected", call="rec.check")

    async def list_dir(self, key: str) -> list[RemoteEntry]:
        self.calls.append("list_dir")
        return []

    def open_stream(self, ref: ObjectRef, offset: int = 0, length: int | None = None) -> Any:
        self.calls.append("open_stream")
        raise AssertionError("reached the service")

    async def fetch_range(self, *args: Any) -> None:
        self.calls.append("fetch_range")

    async def prepare_reads(self, *args: Any) -> None:
        self.calls.append("prepare_reads")


async def test_nothing_reaches_the_service_while_down(monkeypatch: pytest.MonkeyPatch) -> None:
    inner = Recorder()
    down = mount.DownAtStart(inner, AuthError("rejected", call="rec.check"), timeout=5)  # type: ignore[arg-type]
    ref = ObjectRef("rec", "k", "v1", 10)
    with pytest.raises(AuthError):
        await down.list_dir("")
    with pytest.raises(AuthError):
        down.open_stream(ref)
    with pytest.raises(AuthError):
        await down.fetch_range(ref, 0, 10)
    with pytest.raises(AuthError):
        await down.prepare_reads([ref])
    assert down.background_fetch is False
    assert inner.calls == []  # the re-check waits RECHECK_INTERVAL; nothing else went out

    # a re-check that passes makes it the provider again
    monkeypatch.setattr(mount, "RECHECK_INTERVAL", 0.0)
    inner.accept = True
    await trio.lowlevel.checkpoint()
    assert await down.list_dir("") == []
    await down.fetch_range(ref, 0, 10)
    assert down.background_fetch is True
    assert inner.calls == ["check_auth", "list_dir", "fetch_range"]
