"""One token rule for every provider (providers/_auth.py): a rejected token is renewed once, API
calls and downloads alike; a fixed token is not tried twice."""

from __future__ import annotations

import json

import httpx
import pytest

from fusefs.providers._auth import StaticToken, TokenAuth
from fusefs.providers._http import RetryPolicy, stream_range
from fusefs.providers.base import AuthError, ObjectRef, OneShotConsumed
from fusefs.providers.enos import token_rejected
from fusefs.providers.iotda import IotdaProvider
from fusefs.providers.roma import RomaProvider

from .conftest import EnvFactory, read_all, ref_of, walk

FAST = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.01)


class Counting:
    """A token source that hands out tok1, tok2, ... and counts the invalidations."""

    def __init__(self) -> None:
        self.n = 1
        self.invalidated: list[str] = []

    async def token(self) -> str:
        return f"tok{self.n}"

    async def invalidate(self, bad: str) -> bool:
        self.invalidated.append(bad)
        if bad == f"tok{self.n}":
            self.n += 1
        return True


def client_answering(
    answer: httpx.Response, good: str | None
) -> tuple[httpx.AsyncClient, list[str]]:
    """A client whose server accepts only the token ``good`` (``None``: none)."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        tok = request.headers.get("X-Token", "")
        seen.append(tok)
        if tok == good:
            return httpx.Response(200, json={"code": 0})
        return answer

    return httpx.AsyncClient(transport=httpx.MockTransport(handler)), seen


async def test_a_rejected_token_is_renewed_once() -> None:
    source = Counting()
    client, seen = client_answering(httpx.Response(401), good="tok2")
    async with client:
        resp = await client.get("http://x/", auth=TokenAuth(source, "X-Token"))
    assert resp.status_code == 200 and seen == ["tok1", "tok2"]
    assert source.invalidated == ["tok1"]


async def test_a_token_rejected_twice_is_the_callers_to_report() -> None:
    source = Counting()
    client, seen = client_answering(httpx.Response(401), good=None)
    async with client:
        resp = await client.get("http://x/", auth=TokenAuth(source, "X-Token"))
    assert resp.status_code == 401 and seen == ["tok1", "tok2"]  # one renewal, no more


async def test_a_fixed_token_is_not_tried_twice() -> None:
    client, seen = client_answering(httpx.Response(401), good=None)
    async with client:
        resp = await client.get("http://x/", auth=TokenAuth(StaticToken("t"), "X-Token"))
    assert resp.status_code == 401 and seen == ["t"]


async def test_enos_rule_reads_a_200_envelope() -> None:
    """EnOS may say "token expired" (code 1203) in a 200: that is a rejection too."""
    source = Counting()
    expired = httpx.Response(200, json={"code": 1203, "msg": "token expired"})
    client, seen = client_answering(expired, good="tok2")
    auth = TokenAuth(source, "X-Token", token_rejected, check_ok_body=True)
    async with client:
        resp = await client.get("http://x/", auth=auth)
    assert resp.json() == {"code": 0} and seen == ["tok1", "tok2"]


async def test_downloads_use_the_same_source_and_rule() -> None:
    """stream_range's fresh target after a rejection invalidates the token it carried."""
    source = Counting()
    body = b"0123456789"

    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers.get("X-Token") != "tok2":
            return httpx.Response(401, json={"code": 401})
        return httpx.Response(200, content=body, headers={"content-length": str(len(body))})

    auth = TokenAuth(source, "X-Token")
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        got = b"".join(
            [
                c
                async for c in stream_range(
                    client,
                    "t",
                    auth.target("http://x/f"),
                    0,
                    None,
                    is_stale=auth.is_rejected,
                    policy=FAST,
                )
            ]
        )
    assert got == body and source.invalidated == ["tok1"]


def test_enos_token_rule() -> None:
    def resp(status: int, env: object) -> httpx.Response:
        return httpx.Response(status, content=json.dumps(env).encode(),
                              headers={"content-type": "application/json"})  # fmt: skip

    assert token_rejected(resp(401, {}))
    assert token_rejected(resp(200, {"code": 1203}))
    assert not token_rejected(resp(200, {"code": 0}))
    assert not token_rejected(httpx.Response(200, content=b"{not json"))


# ---- against the emulator ----------------------------------------------------------------------


@pytest.mark.parametrize(("provider", "route"), [("enos", "enos.download"),
                                                 ("roma", "roma.download"),
                                                 ("iotda", "iotda.download")])  # fmt: skip
async def test_a_download_rejected_once_gets_a_fresh_token(
    make_env: EnvFactory, provider: str, route: str
) -> None:
    env = await make_env(iotda_interval=0)
    p = env.providers[provider]
    e = (await walk(p))[0][1]
    await env.faults({"rules": [{"route": route, "kind": "error", "status": 401, "count": 1}]})
    assert await read_all(p, e)
    stats = await env.stats()
    assert stats[route] == 2
    tokens = stats.get("enos.token.get", 0) if provider == "enos" else stats["iam.token"]
    assert tokens == 2


async def test_an_api_call_rejected_twice_is_an_auth_error(make_env: EnvFactory) -> None:
    env = await make_env()
    roma = env.providers["roma"]
    await env.faults({"rules": [{"route": "roma.job", "kind": "error", "status": 401,
                                 "count": 2}]})  # fmt: skip
    assert isinstance(roma, RomaProvider)
    inst = env.cfg.roma.instances[0]
    with pytest.raises(AuthError, match="even after a fresh one"):
        await roma.job_status(inst.id, inst.jobs[0])
    assert (await env.stats())["roma.job"] == 2


# ---- describe(): live state per object ----------------------------------------------------------


async def test_roma_describe_tells_the_one_download(make_env: EnvFactory) -> None:
    env = await make_env()
    roma = env.providers["roma"]
    e = (await walk(roma))[0][1]
    ref = ref_of(roma, e)
    assert roma.describe(ref) == {}
    assert await read_all(roma, e)
    assert roma.describe(ref) == {"roma_download": "downloaded"}
    with pytest.raises(OneShotConsumed):
        await read_all(roma, e)
    assert roma.describe(ref) == {"roma_download": "consumed"}


async def test_iotda_describe_tells_the_queue(make_env: EnvFactory) -> None:
    env = await make_env(iotda_interval=30)
    iotda = env.providers["iotda"]
    assert isinstance(iotda, IotdaProvider)
    ref = ObjectRef("iotda", "t/x", "v", None)
    assert iotda.describe(ref) == {}
    iotda.turns.holder = "t/x"
    assert iotda.describe(ref) == {"iotda_download": "in progress"}


class _DictShare:
    def __init__(self) -> None:
        self.values: dict[str, tuple[str, float]] = {}

    async def get(self, name: str) -> str | None:
        got = self.values.get(name)
        return got[0] if got else None

    async def put(self, name: str, value: str, ttl: float) -> None:
        self.values[name] = (value, ttl)


async def test_a_shared_token_is_taken_unless_rejected_or_about_to_expire() -> None:
    from fusefs.providers._auth import SharedSlot

    now = [1000.0]
    share = _DictShare()
    slot = SharedSlot(share, "iam:https://iam:dom:user:proj", lambda: now[0])
    assert await slot.take(None, 600) is None  # nothing shared yet
    await slot.give("tok-1", 1000.0 + 3600, 600, project_id="p1")
    assert share.values[slot.name][1] == 3000.0  # shared for its life less the margin
    assert await slot.take(None, 600) == ("tok-1", 4600.0, {"project_id": "p1"})
    assert await slot.take("tok-1", 600) is None  # this host saw it rejected: not again
    now[0] = 4100.0  # 500 s left: less than the margin
    assert await slot.take(None, 600) is None
    await slot.give("tok-2", 4100.0 + 100, 600)  # too short to share
    assert "tok-2" not in share.values[slot.name][0]
    share.values[slot.name] = ("{not json", 1.0)
    assert await slot.take(None, 600) is None  # unreadable: a fresh one is fetched
