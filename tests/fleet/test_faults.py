"""The tier going away and coming back; secrets kept out of logs and reprs; configuration."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import trio

from fusefs.fleet import FleetConfig, FleetConfigError, FleetTier, load_secret
from tests.fleet.conftest import RedisServer, make_tier

PASSWORD = "pw-Zq8-very-secret"
TOKEN = "tok-Kx3-provider-secret"
# the commands the tier needs, as docs/fleet.md gives them
ACL_LINE = (
    "~fusefs:* resetchannels -@all +ping +info +time +get +getex +set +del +exists +pexpire"
    " +persist +eval +evalsha +script|load"
)
MINIMAL_ACL = ACL_LINE.split(" ")


def fleet_lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "fusefs.fleet" and text in r.getMessage()
    ]


async def every_call(t: FleetTier) -> list[object]:
    """Each public call once; while Redis is away, each must answer its fallback."""
    out: list[object] = [
        await t.get_block("enos", "o", "v", 0),
        await t.put_block("enos", "o", "v", 0, b"x"),
        await t.lease_block("enos", "o", "v", 1),
        (await t.fetch_block("enos", "o", "v", 2)).lease,
        await t.acquire_window("w", 0.5),
        await t.claim_once("c"),
        await t.publish_whole("p", b"abc"),
        await t.read_whole("p"),
        await t.wait_whole("c"),
        await t.shared_token("t"),
        await t.publish_token("t", TOKEN, 60),
        await t.refresh_claim("c"),
        await t.ping(),
    ]
    return out


FALLBACKS = [None, False, None, None, None, None, False, None, None, None, False, False, False]


async def test_redis_killed_then_restarted(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fusefs.fleet")
    t = make_tier(redis_server, share_tokens=True, retry_after=0.3, retry_max=0.3)
    assert await t.put_block("enos", "o", "v", 0, b"block")
    assert await t.get_block("enos", "o", "v", 0) == b"block"

    # a host waiting for another host's download when Redis dies
    other = make_tier(redis_server)
    held = await other.lease_block("enos", "o", "v", 9)
    assert held is not None

    async def kill_soon() -> None:
        await trio.sleep(0.2)
        redis_server.kill()

    async with trio.open_nursery() as n:
        n.start_soon(kill_soon)
        t0 = trio.current_time()
        got = await t.fetch_block("enos", "o", "v", 9, wait=10)
        assert got.data is None and got.lease is None  # go to the cloud
        assert trio.current_time() - t0 < 0.2 + t._bound() + 0.3

    # every call answers its fallback, quickly, and nothing raises
    t0 = trio.current_time()
    for _ in range(5):
        assert await every_call(t) == FALLBACKS
    assert trio.current_time() - t0 < 3 * t._bound()  # at most a probe or two hit the network
    assert not t.available
    assert len(fleet_lines(caplog, "unavailable")) == 1  # one line for the outage
    assert t.stats.outages == 1

    # back on the same port: the same tier works again by itself, and says so once
    redis_server.start()
    await trio.sleep(0.35)
    deadline = trio.current_time() + 5
    while await t.get_block("enos", "o", "v", 0) is None and not t.available:
        assert trio.current_time() < deadline
        await trio.sleep(0.05)
    # (the server's memory went with the process: the block is the one published next)
    assert await t.put_block("enos", "o", "v", 0, b"again")
    assert await t.get_block("enos", "o", "v", 0) == b"again"
    assert await t.ping()
    # the Lua scripts went with the server's memory too: they are loaded again
    assert (await t.fetch_block("enos", "o", "v", 5)).lease is not None
    assert (await t.acquire_window("w2", 0.5) or 9) < 0.2
    assert await t.claim_once("c2") is True
    assert len(fleet_lines(caplog, "is back")) == 1
    assert len(fleet_lines(caplog, "unavailable")) == 1
    await t.aclose()


async def test_redis_never_there(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from tests.fleet.conftest import free_port

    srv = RedisServer(tmp_path)
    srv.port = free_port()  # nothing listens there
    t = make_tier(srv)
    caplog.set_level(logging.INFO, logger="fusefs.fleet")
    t0 = trio.current_time()
    assert await every_call(t) == FALLBACKS
    assert trio.current_time() - t0 < 2 * t._bound()
    assert len(fleet_lines(caplog, "unavailable")) == 1


async def test_unresponsive_redis_is_bounded(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis that accepts but does not answer (stopped with SIGSTOP) costs one bound."""
    import signal

    t = make_tier(redis_server)
    assert await t.ping()
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        # a caller that gives up is not held by the worker thread, and that is no outage
        t0 = trio.current_time()
        with trio.move_on_after(0.1):
            await t.get_block("enos", "o", "v", 0)
        assert trio.current_time() - t0 < 0.3 and t.available
        t0 = trio.current_time()
        assert await t.get_block("enos", "o", "v", 0) is None
        assert trio.current_time() - t0 <= t._bound() + 0.2
        assert await t.get_block("enos", "o", "v", 0) is None  # now without waiting
        assert trio.current_time() - t0 <= t._bound() + 0.3
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    assert len(fleet_lines(caplog, "unavailable")) == 1


async def test_secrets_never_in_logs_or_reprs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    acl = ["--user", "fleet", "on", f">{PASSWORD}", *MINIMAL_ACL, "--user", "default", "off"]
    srv = RedisServer(tmp_path, acl)
    srv.start()
    caplog.set_level(logging.DEBUG)
    try:
        pwfile = tmp_path / "pw"
        pwfile.write_text(PASSWORD + "\n")
        os.chmod(pwfile, 0o600)
        pw = load_secret(path=pwfile)
        good = make_tier(srv, username="fleet", password=pw, share_tokens=True)
        assert await good.ping()
        assert await good.publish_token("koodrive:user", TOKEN, 60)
        assert await good.shared_token("koodrive:user") == TOKEN
        assert await good.put_block("enos", "o", "v", 0, b"data")
        # every call works with the minimal ACL (no "refused" lines)
        f = await good.fetch_block("enos", "o", "v", 1)
        assert f.lease is not None and await f.lease.publish(b"y")
        assert await good.acquire_window("w", 0.1) is not None
        assert await good.claim_once("c") and await good.refresh_claim("c")
        assert await good.publish_whole("c", b"abc") and await good.wait_whole("c") == b"abc"
        assert await good.release_claim("c")
        assert not fleet_lines(caplog, "refused")
        # a wrong password: the tier is down, with one line that names neither secret
        bad = make_tier(srv, username="fleet", password=PASSWORD + "x", share_tokens=True)
        assert await bad.shared_token("koodrive:user") is None
        assert not bad.available
        texts = [repr(good), repr(good.config), str(good.config), repr(bad), repr(bad.config)]
        texts += [r.getMessage() for r in caplog.records]
        texts += [caplog.text]
        for text in texts:
            assert PASSWORD not in text and TOKEN not in text
        assert fleet_lines(caplog, "unavailable")
        # tokens are opt-in: without share_tokens nothing goes to Redis
        plain = make_tier(srv, username="fleet", password=pw)
        assert await plain.shared_token("koodrive:user") is None
        assert not await plain.publish_token("koodrive:user", TOKEN, 60)
    finally:
        srv.stop()


def test_config_checks(tmp_path: Path) -> None:
    with pytest.raises(FleetConfigError, match="credentials"):
        FleetConfig(url=f"redis://u:{PASSWORD}@localhost:6379/0")
    with pytest.raises(FleetConfigError, match="redis://"):
        FleetConfig(url="http://localhost")
    with pytest.raises(FleetConfigError, match="key_prefix"):
        FleetConfig(url="redis://localhost", key_prefix="a b")
    assert FleetConfig(url="rediss://redis.plant:6380/1").tls
    cfg = FleetConfig(url="redis://localhost", password=PASSWORD, username="fleet")
    assert PASSWORD not in repr(cfg) and "fleet'" not in repr(cfg)
    # secrets come from the environment or a file only its owner can read
    assert load_secret("FLEET_PW", environ={"FLEET_PW": PASSWORD}) == PASSWORD
    with pytest.raises(FleetConfigError, match="not set"):
        load_secret("FLEET_PW", environ={})
    f = tmp_path / "pw"
    f.write_text(PASSWORD)
    os.chmod(f, 0o644)
    with pytest.raises(FleetConfigError, match="chmod 600") as e:
        load_secret(path=f)
    assert PASSWORD not in str(e.value)
    os.chmod(f, 0o600)
    assert load_secret(path=f) == PASSWORD
    with pytest.raises(FleetConfigError):
        load_secret()


async def test_tls(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    srv = RedisServer(tmp_path, tls=True)
    srv.start()
    try:
        t = make_tier(srv, tls_ca_file=str(srv.ca))
        assert t.config.tls
        assert await t.put_block("enos", "o", "v", 0, b"over TLS")
        assert await t.get_block("enos", "o", "v", 0) == b"over TLS"
        # a server whose certificate the host does not trust is a tier that is unavailable
        untrusted = make_tier(srv)
        caplog.set_level(logging.WARNING, logger="fusefs.fleet")
        assert await untrusted.get_block("enos", "o", "v", 0) is None
        assert not untrusted.available
        assert any("certificate" in m.lower() for m in fleet_lines(caplog, "unavailable"))
        # nor does plain text reach a TLS port
        plain = make_tier(srv, url=srv.url.replace("rediss://", "redis://"))
        assert await plain.get_block("enos", "o", "v", 0) is None
    finally:
        srv.stop()


@pytest.mark.parametrize(("policy", "warned"), [("allkeys-lru", True), ("volatile-lru", False)])
async def test_memory_policy_hint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, policy: str, warned: bool
) -> None:
    srv = RedisServer(tmp_path, ["--maxmemory", "64mb", "--maxmemory-policy", policy])
    srv.start()
    try:
        caplog.set_level(logging.WARNING, logger="fusefs.fleet")
        assert await make_tier(srv).ping()
        assert bool(fleet_lines(caplog, "maxmemory-policy")) == warned
    finally:
        srv.stop()
