"""A fleet on one machine: several daemons, each with its own cache dir, mounting the same
emulator world with one real redis-server as their shared tier (docs/fleet.md)."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fleet.conftest import RedisServer
from tests.helpers.mounting import Emulator, Mount, mounted
from tests.mount.test_mount import manifest, md5

pytestmark = pytest.mark.fuse

DATA_ROUTES = ("enos.download", "koodrive.obs", "iotda.download", "roma.download")


def sent(emulator: Emulator) -> dict[str, int]:
    """Bytes the emulator sent per data route."""
    raw = emulator.admin("GET", "/_admin/stats")
    return {k: int(v) for k, v in raw.get("bytes", {}).items() if k in DATA_ROUTES and v}


def fleet_toml(redis: RedisServer, **extra: object) -> str:
    extra = {"key_prefix": "t", **extra}
    lines = ["[fleet]", f'url = "{redis.url}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    return "\n".join(lines)


@contextlib.contextmanager
def fleet(
    world: Path, emulator: Emulator, workdir: Path, redis: RedisServer, n: int, **kw: Any
) -> Iterator[list[Mount]]:
    with contextlib.ExitStack() as stack:
        mounts = [
            stack.enter_context(
                mounted(
                    world,
                    emulator.url,
                    workdir,
                    cache_dir=workdir / f"cache{i}",
                    name=f"host{i}",
                    cache_opts={"block_size": "256KiB"},
                    extra_toml=fleet_toml(redis),
                    **kw,
                )
            )
            for i in range(n)
        ]
        yield mounts


def biggest(world: Path, provider: str) -> dict[str, Any]:
    return max((f for f in manifest(world) if f["provider"] == provider), key=lambda f: f["size"])


def settle(
    redis: RedisServer, pattern: str, at_least: int, log: Callable[[], str] | None = None
) -> None:
    """Wait until the tier holds ``at_least`` keys matching ``pattern`` (publishes are async);
    ``log``: the daemon log shown when it does not."""
    r = redis.client()
    try:
        deadline = time.monotonic() + 20  # generous: a loaded CI host
        while (n := len(list(r.scan_iter(match=pattern, count=1000)))) < at_least:
            if time.monotonic() >= deadline:
                tail = log()[-4000:] if log else ""
                raise AssertionError(f"the tier got {n}, not {at_least}, {pattern}\n{tail}")
            time.sleep(0.05)
    finally:
        r.close()


def test_a_second_host_reads_a_file_without_asking_the_cloud(
    world_tiny: Path, emulator: Emulator, workdir: Path, redis_server: RedisServer
) -> None:
    for provider in ("koodrive", "enos"):
        f = biggest(world_tiny, provider)
        assert f["size"] > (256 << 10 if provider == "koodrive" else 0), f
        with fleet(world_tiny, emulator, workdir / provider, redis_server, 2) as (a, b):
            assert md5(a.path / f["path"]) == f["md5"]
            blocks = -(-f["size"] // (256 << 10))
            settle(redis_server, "t:blk:*", blocks)
            emulator.reset_stats()
            assert md5(b.path / f["path"]) == f["md5"]
            assert sent(emulator) == {}, sent(emulator)  # no file byte from the cloud


def test_three_cold_readers_download_each_block_once(
    world_tiny: Path, emulator: Emulator, workdir: Path, redis_server: RedisServer
) -> None:
    f = biggest(world_tiny, "koodrive")
    # a WAN-ish cloud: the readers overlap
    emulator.set_faults({"rules": [{"route": "koodrive.obs", "kind": "latency", "seconds": 0.02}]})
    with fleet(world_tiny, emulator, workdir, redis_server, 3) as mounts:
        emulator.reset_stats()
        results: list[str] = []

        def read(m: Mount) -> None:
            results.append(md5(m.path / f["path"]))

        threads = [threading.Thread(target=read, args=(m,)) for m in mounts]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert results == [f["md5"]] * 3
        got = sent(emulator).get("koodrive.obs", 0)
        # each block once; a block a waiting host gave up on may come twice: at most one more
        assert f["size"] <= got <= f["size"] + (256 << 10), (got, f["size"])


def test_a_one_shot_archive_read_on_one_host_is_readable_on_the_others(
    world_tiny: Path, emulator: Emulator, workdir: Path, redis_server: RedisServer
) -> None:
    archive = next(f for f in manifest(world_tiny) if f["provider"] == "roma")
    with fleet(world_tiny, emulator, workdir, redis_server, 3) as (a, b, c):
        # each host has listed the archive (the API stops listing it once it is consumed; a
        # host that never saw it listed does not show it: docs/fleet.md, "Limits")
        for m in (a, b, c):
            assert (m.path / archive["path"]).parent.is_dir()
            assert (m.path / archive["path"]).name in os.listdir((m.path / archive["path"]).parent)
        emulator.reset_stats()
        assert md5(a.path / archive["path"]) == archive["md5"]
        assert md5(b.path / archive["path"]) == archive["md5"]
        assert md5(c.path / archive["path"]) == archive["md5"]
        assert emulator.stats().get("roma.download", 0) == 1  # downloaded by exactly one host


def test_a_host_mounted_after_the_archive_was_consumed_still_has_it(
    world_tiny: Path, emulator: Emulator, workdir: Path, redis_server: RedisServer
) -> None:
    """The ROMA API stops listing a consumed archive: the host that downloaded it shared the
    listing entry and the archive, so a host that mounts later lists and reads it too."""
    archive = next(f for f in manifest(world_tiny) if f["provider"] == "roma")
    emulator.reset_stats()
    with fleet(world_tiny, emulator, workdir / "early", redis_server, 1) as (a,):
        assert md5(a.path / archive["path"]) == archive["md5"]
    with fleet(world_tiny, emulator, workdir / "late", redis_server, 1) as (late,):
        folder = late.path / archive["path"]
        assert folder.name in os.listdir(folder.parent)  # not in the API's listing any more
        assert md5(folder) == archive["md5"]
    assert emulator.stats().get("roma.download", 0) == 1


def test_the_iotda_window_is_one_per_fleet(
    world_tiny: Path, emulator: Emulator, workdir: Path, redis_server: RedisServer
) -> None:
    window = 1.0
    emulator.set_faults({"iotda_download_window": window})
    exports = [f for f in manifest(world_tiny) if f["provider"] == "iotda"][:4]
    assert len(exports) >= 2
    opts = {"download_interval": window}
    with fleet(world_tiny, emulator, workdir, redis_server, 2, iotda_opts=opts) as (a, b):
        emulator.reset_stats()
        results: list[bool] = []

        def read(m: Mount, f: dict[str, Any]) -> None:
            results.append(md5(m.path / f["path"]) == f["md5"])

        threads = [
            threading.Thread(target=read, args=(m, f))
            for f in exports
            for m in (a, b)  # both hosts want every export
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert results == [True] * (2 * len(exports))
        raw = emulator.admin("GET", "/_admin/stats")
        statuses = raw["statuses"].get("iotda.download", {})
        # one download per export for the whole fleet, and never "too frequent" (403)
        assert statuses.get("200", 0) == len(exports), statuses
        assert "403" not in statuses, statuses


def test_redis_going_away_and_coming_back(
    world_tiny: Path, emulator: Emulator, workdir: Path, redis_server: RedisServer
) -> None:
    files = sorted(
        (f for f in manifest(world_tiny) if f["provider"] == "koodrive" and f["size"] > 0),
        key=lambda f: -f["size"],
    )
    assert len(files) >= 8
    with fleet(world_tiny, emulator, workdir, redis_server, 2) as (a, b):
        # mid-read: each request of the file takes a while; Redis is killed while it is read
        slow = {"route": "koodrive.obs", "kind": "latency", "seconds": 0.05}
        emulator.set_faults({"rules": [slow]})
        got: list[str] = []
        reader = threading.Thread(target=lambda: got.append(md5(a.path / files[0]["path"])))
        reader.start()
        time.sleep(0.15)
        redis_server.kill()  # the tier is gone: the read goes on from the cloud
        reader.join(timeout=60)
        assert got == [files[0]["md5"]]
        emulator.set_faults({"rules": []})
        for f in files[:2]:
            assert md5(b.path / f["path"]) == f["md5"]
        assert "fleet tier unavailable" in a.log_text() + b.log_text()
        # a "back" logged earlier (a slow first answer at mount time on a loaded host) is not
        # this one: only what host A logs after the restart counts
        seen = len(a.log_text())
        redis_server.start()  # back, same port: sharing resumes by itself (after a back-off)
        deadline = time.monotonic() + 30
        while "fleet tier is back" not in a.log_text()[seen:]:
            assert time.monotonic() < deadline, "the tier did not come back"
            f = files.pop(2)  # a file not read yet: its fetch probes the tier
            assert md5(a.path / f["path"]) == f["md5"]
            time.sleep(0.5)
        f = files.pop(2)
        assert md5(a.path / f["path"]) == f["md5"]
        settle(redis_server, "t:blk:*", -(-f["size"] // (256 << 10)), a.log_text)
        emulator.reset_stats()
        assert md5(b.path / f["path"]) == f["md5"]
        assert sent(emulator) == {}, sent(emulator)


def test_hosts_share_their_tokens_when_asked(
    world_tiny: Path, emulator: Emulator, workdir: Path, redis_server: RedisServer
) -> None:
    """With ``share_tokens`` the second host takes the first one's EnOS and IAM tokens from the
    tier: the token services see one request each for the whole fleet."""

    def tokens() -> dict[str, int]:
        stats = emulator.stats()
        return {k: stats.get(k, 0) for k in ("enos.token.get", "iam.token")}

    for share, want in ((False, 2), (True, 1)):
        emulator.reset_stats()
        extra = fleet_toml(redis_server, key_prefix=f"tok{int(share)}", share_tokens=share)
        with contextlib.ExitStack() as stack:
            for i in range(2):
                m = stack.enter_context(
                    mounted(
                        world_tiny,
                        emulator.url,
                        workdir / f"share{int(share)}",
                        cache_dir=workdir / f"share{int(share)}" / f"cache{i}",
                        name=f"host{i}",
                        extra_toml=extra,
                    )
                )
                assert os.listdir(m.path / "enos") and os.listdir(m.path / "iotda" / "exports")
            assert tokens() == {"enos.token.get": want, "iam.token": want}, tokens()
        r = redis_server.client()
        try:  # what the tier holds names the credential, never the secrets
            for k in r.scan_iter(match="tok1:*"):
                assert b"secret" not in k.lower() and b"password" not in k.lower()
        finally:
            r.close()
