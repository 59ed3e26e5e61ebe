"""Fixtures for provider tests: an in-process emulator (ASGITransport) and providers built from a
config written for it (so config → registry → providers is exercised too)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from fusefs.config import MountConfig
from fusefs.providers._http import RetryPolicy
from fusefs.providers.base import EntryKind, ObjectRef, Provider, RemoteEntry
from fusefs.providers.registry import build_providers, load_config

BASE = "http://emulator.invalid"
FAST = RetryPolicy(attempts=6, base_delay=0.001, max_delay=0.01, unavailable_attempts=2)


class FakeClock:
    """Epoch seconds that only move when told to."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Env:
    world_dir: Path
    world: dict[str, Any]
    app: Any
    client: httpx.AsyncClient
    cfg: MountConfig
    providers: dict[str, Provider] = field(default_factory=dict)

    async def stats(self) -> dict[str, int]:
        resp = await self.client.get(f"{BASE}/_admin/stats")
        resp.raise_for_status()
        return dict(resp.json()["requests"])

    async def statuses(self, route: str) -> dict[str, int]:
        resp = await self.client.get(f"{BASE}/_admin/stats")
        return dict(resp.json()["statuses"].get(route, {}))

    async def faults(self, plan: dict[str, Any], merge: bool = True) -> None:
        resp = await self.client.put(
            f"{BASE}/_admin/faults", params={"merge": "1" if merge else "0"}, json=plan
        )
        assert resp.status_code == 200, resp.text

    async def reset_stats(self) -> None:
        (await self.client.post(f"{BASE}/_admin/stats/reset")).raise_for_status()


EnvFactory = Callable[..., Any]


@pytest.fixture
async def make_env(world_tiny: Path, tmp_path: Path) -> AsyncIterator[EnvFactory]:
    from fusefs.emulator.app import create_app
    from fusefs.emulator.faults import FaultPlan
    from fusefs.testbed import demo_config

    clients: list[httpx.AsyncClient] = []

    async def make(
        *,
        faults: dict[str, Any] | None = None,
        emulator_clock: Callable[[], float] | None = None,
        provider_clock: Callable[[], float] | None = None,
        iotda_interval: float = 0.05,
        retry: RetryPolicy = FAST,
    ) -> Env:
        plan = FaultPlan.from_json({"iotda_download_window": iotda_interval, **(faults or {})})
        app = (
            create_app(world_tiny, plan)
            if emulator_clock is None
            else create_app(world_tiny, plan, clock=emulator_clock)
        )
        # raise_app_exceptions=False: an injected connection reset ends the body early, as a socket
        # would (ASGITransport buffers the body, so the cut shows as a short body)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False)
        )
        clients.append(client)
        cfg_path = tmp_path / f"config{len(clients)}.toml"
        env_vars = demo_config(world_tiny, BASE, tmp_path / "cache", cfg_path)
        cfg = load_config(cfg_path, env_vars)
        assert cfg.iotda is not None
        cfg = cfg.with_section(
            "iotda", dataclasses.replace(cfg.iotda, download_interval=iotda_interval)
        )
        providers = build_providers(
            cfg, client, clock=provider_clock or (emulator_clock or __import__("time").time),
            retry_policy=retry,
        )  # fmt: skip
        world = json.loads((world_tiny / "world.json").read_text())
        return Env(world_tiny, world, app, client, cfg, {p.name: p for p in providers})

    yield make
    for c in clients:
        await c.aclose()


@pytest.fixture
def manifest(world_tiny: Path) -> list[dict[str, Any]]:
    return list(json.loads((world_tiny / "manifest.json").read_text()))


async def walk(
    provider: Provider, key: str = "", path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], RemoteEntry]]:
    """Every FILE entry of the tree with its path of raw remote names."""
    out = []
    for e in await provider.list_dir(key):
        if e.kind is EntryKind.DIR:
            out.extend(await walk(provider, e.key, (*path, e.name)))
        else:
            out.append(((*path, e.name), e))
    return out


def ref_of(provider: Provider, e: RemoteEntry) -> ObjectRef:
    return ObjectRef(provider.name, e.key, e.version, e.size)


async def read_all(
    provider: Provider, e: RemoteEntry, offset: int = 0, length: int | None = None
) -> bytes:
    parts = []
    async with provider.open_stream(ref_of(provider, e), offset, length) as it:
        async for chunk in it:
            parts.append(chunk)
    return b"".join(parts)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()
