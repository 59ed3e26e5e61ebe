"""Unit tests of the shared HTTP layer and the KooDrive helpers (no emulator)."""

from __future__ import annotations

import math

import httpx
import pytest
import trio

from fusefs.providers._http import (
    Target,
    error_for_status,
    map_http_errors,
    parse_retry_after,
    stream_range,
)
from fusefs.providers.base import (
    AuthError,
    ObjectNotFound,
    ProtocolError,
    ProviderError,
    TransientError,
    Unavailable,
    VersionMismatch,
)
from fusefs.providers.koodrive import AppSigner, LinkBatcher, _Link, link_refresh_at

from .conftest import FAST


def test_error_for_status_table() -> None:
    assert isinstance(error_for_status(404, "c"), ObjectNotFound)
    assert isinstance(error_for_status(401, "c"), AuthError)
    assert isinstance(error_for_status(403, "c"), AuthError)
    for s in (500, 502, 503, 408, 429):
        assert isinstance(error_for_status(s, "c"), TransientError)
    err = error_for_status(429, "c", headers={"retry-after": "7"})
    assert isinstance(err, TransientError) and err.retry_after == 7.0
    assert isinstance(error_for_status(400, "c"), ProtocolError)
    assert str(error_for_status(404, "enos.x")).startswith("enos.x: HTTP 404")


def test_parse_retry_after() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("garbage") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (httpx.ConnectError("refused"), Unavailable),
        (httpx.ReadTimeout("slow"), TransientError),
        (httpx.RemoteProtocolError("cut"), TransientError),
        (httpx.ReadError("reset"), TransientError),
    ],
)
def test_map_http_errors(exc: Exception, kind: type[ProviderError]) -> None:
    with pytest.raises(kind) as info, map_http_errors("x.call"):
        raise exc
    assert info.value.call == "x.call"
    assert type(info.value) is kind


def test_link_refresh_at_80_percent_or_60s_before() -> None:
    url = "https://obs/x?X-Amz-Date=20240104T025403Z&X-Amz-Expires=3600&X-Amz-Signature=s"
    start = 1704336843.0  # 2024-01-04T02:54:03Z
    assert link_refresh_at(url, 0) == start + 2880
    short = url.replace("3600", "100")
    assert link_refresh_at(short, 0) == start + 40  # 60 s before expiry is earlier than 80 %
    assert link_refresh_at("https://obs/x", 5.0) == 305.0


def test_app_signer_headers() -> None:
    signer = AppSigner("app1", "secret", "42", clock=lambda: 1725852805.0)
    req = httpx.Request("POST", "https://kd.example/koodrive/ose/v1/files/0?b=2&a=1", content=b"{}")
    signer.sign(req)
    assert req.headers["X-Date"] == "20240909T033325Z"
    assert req.headers["X-User-Id"] == "42"
    auth = req.headers["Authorization"]
    assert auth.startswith("HMAC-SHA256 AppId=app1,SignedHeaders=host;x-date;x-user-id,Signature=")
    assert len(auth.rsplit("=", 1)[1]) == 64
    assert "secret" not in repr(signer)


async def test_link_batcher_coalesces_concurrent_requests() -> None:
    calls: list[list[str]] = []

    async def fetch(cid: str, ids: list[str]) -> dict[str, _Link | ProviderError]:
        calls.append(ids)
        await trio.sleep(0.01)
        return {i: _Link(f"https://obs/{i}", 1e12) for i in ids}

    batcher = LinkBatcher(fetch, window=0.02)
    got: dict[str, str] = {}

    async def one(i: str) -> None:
        got[i] = (await batcher.get("c", i)).url

    async with trio.open_nursery() as n:
        for i in range(250):
            n.start_soon(one, f"f{i}")
    assert len(calls) == math.ceil(250 / 100)
    assert all(len(c) <= 100 for c in calls)
    assert got == {f"f{i}": f"https://obs/f{i}" for i in range(250)}


async def test_link_batcher_survives_a_cancelled_leader() -> None:
    async def fetch(cid: str, ids: list[str]) -> dict[str, _Link | ProviderError]:
        await trio.sleep(1)
        return {i: _Link(i, 1e12) for i in ids}

    batcher = LinkBatcher(fetch, window=0.0)
    result: list[str] = []

    async def follower() -> None:
        result.append((await batcher.get("c", "b")).url)

    async with trio.open_nursery() as n:
        with trio.move_on_after(0.1):
            n.start_soon(follower)
            await batcher.get("c", "a")  # the leader, cancelled mid-call
    assert result == ["b"]


class _Server:
    """A ranged server for stream_range: cuts, ignored ranges, expiring links, size changes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.cut_after: int | None = None
        self.ignore_range = False
        self.valid_link = "l1"
        self.requests = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if request.url.params.get("link") != self.valid_link:
            return httpx.Response(403, text="<Error><Code>AccessDenied</Code></Error>")
        first, last = request.headers["range"].removeprefix("bytes=").split("-")
        a, b = int(first), (int(last) if last else len(self.data) - 1)
        body = self.data if self.ignore_range else self.data[a : b + 1]
        if self.cut_after is not None:
            body, self.cut_after = body[: self.cut_after], None
        if self.ignore_range:
            return httpx.Response(200, content=body)
        return httpx.Response(
            206,
            content=body,
            headers={"content-range": f"bytes {a}-{b}/{len(self.data)}"},
        )


async def _collect(server: _Server, offset: int, length: int | None, size: int | None) -> bytes:
    links = iter(["l2", "l3"])
    current = ["l1"]

    async def target(stale: bool) -> Target:
        if stale:
            current[0] = next(links)
        return Target("https://obs/x", {}, {"link": current[0]})

    async with httpx.AsyncClient(transport=httpx.MockTransport(server.handler)) as client:
        parts = [
            c
            async for c in stream_range(
                client, "t", target, offset, length, expected_size=size, policy=FAST
            )
        ]
    return b"".join(parts)


async def test_stream_range_resumes_after_a_cut() -> None:
    data = bytes(range(256)) * 100
    s = _Server(data)
    s.cut_after = 1000
    assert await _collect(s, 10, 5000, len(data)) == data[10:5010]
    assert s.requests == 2


async def test_stream_range_skips_when_range_is_ignored() -> None:
    data = bytes(range(256)) * 10
    s = _Server(data)
    s.ignore_range = True
    assert await _collect(s, 700, 100, len(data)) == data[700:800]


async def test_stream_range_fresh_link_on_403() -> None:
    data = b"x" * 3000
    s = _Server(data)
    s.valid_link = "l2"
    assert await _collect(s, 0, None, len(data)) == data


async def test_stream_range_size_change_is_version_mismatch() -> None:
    s = _Server(b"y" * 100)
    with pytest.raises(VersionMismatch):
        await _collect(s, 0, None, 200)


async def test_stream_range_gives_up_after_repeated_403() -> None:
    s = _Server(b"z" * 10)
    s.valid_link = "never"
    with pytest.raises(AuthError):
        await _collect(s, 0, None, 10)
