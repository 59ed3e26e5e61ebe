"""ONE contract suite over every provider (rclone's fstests idea), against the in-process emulator.

For each provider: list the whole tree, compare (depth, remote name, remote id, size) of every file
with the world's manifest.json, and read every file through ``open_stream`` comparing md5.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from fusefs.providers.base import EntryKind, Provider

from .conftest import EnvFactory, md5, read_all, walk

PROVIDERS = ["enos", "koodrive", "iotda", "roma"]


def expected(manifest: list[dict[str, Any]], name: str) -> Counter[tuple[Any, ...]]:
    return Counter(
        (m["path"].count("/"), m["remote_name"], m["remote_id"], m["size"], m["md5"])
        for m in manifest
        if m["provider"] == name
    )


@pytest.mark.parametrize("name", PROVIDERS)
async def test_tree_and_bytes_match_the_world(
    make_env: EnvFactory, manifest: list[dict[str, Any]], name: str
) -> None:
    env = await make_env()
    provider: Provider = env.providers[name]
    files = await walk(provider)
    got: Counter[tuple[Any, ...]] = Counter()
    for path, entry in files:
        data = await read_all(provider, entry)
        if provider.capabilities.size_known:
            assert entry.size == len(data), path
        else:
            assert entry.size is None
        if entry.md5 is not None:
            assert entry.md5 == md5(data), path
        assert entry.version, path
        got[(len(path), entry.name, entry.remote_id, len(data), md5(data))] += 1
    want = expected(manifest, name)
    assert got == want, f"missing: {sorted(want - got)[:5]} unexpected: {sorted(got - want)[:5]}"


@pytest.mark.parametrize("name", PROVIDERS)
async def test_root_lists_directories_with_unique_keys(make_env: EnvFactory, name: str) -> None:
    env = await make_env()
    provider = env.providers[name]
    root = await provider.list_dir("")
    assert root and all(e.kind is EntryKind.DIR and e.size == 0 for e in root)
    assert len({e.key for e in root}) == len(root)


@pytest.mark.parametrize("name", ["enos", "koodrive"])
async def test_ranged_reads_return_the_exact_slice(make_env: EnvFactory, name: str) -> None:
    env = await make_env()
    provider = env.providers[name]
    files = [e for _, e in await walk(provider) if e.size and e.size > 10]
    assert files
    for e in files[:10]:
        whole = await read_all(provider, e)
        assert e.size is not None
        for off, ln in ((0, 1), (1, 5), (e.size // 2, None), (e.size - 3, 3), (e.size - 1, 100)):
            assert (
                await read_all(provider, e, off, ln)
                == whole[off : None if ln is None else off + ln]
            )


async def test_enos_firmware_only_for_devices_and_named_with_version(make_env: EnvFactory) -> None:
    env = await make_env()
    provider = env.providers["enos"]
    for org in env.world["enos"]["orgs"]:
        devices = {a["assetId"]: a["productKey"] for a in org["assets"] if a.get("productKey")}
        for asset in await provider.list_dir(f"org/{org['orgId']}"):
            subdirs = await provider.list_dir(asset.key)
            assert [d.name for d in subdirs] == ["files", "firmware"]
            fws = await provider.list_dir(subdirs[1].key)
            if asset.name not in devices:
                assert fws == []
            else:
                want = {
                    f["firmwareId"]
                    for f in org["firmwares"]
                    if f["productKey"] == devices[asset.name]
                }
                assert {f.remote_id for f in fws} == want


def test_every_registered_provider_is_in_this_suite() -> None:
    """Adding a provider (docs/architecture.md, "Adding a provider") includes its entry here."""
    from fusefs.providers.registry import REGISTRY

    assert list(REGISTRY) == PROVIDERS
