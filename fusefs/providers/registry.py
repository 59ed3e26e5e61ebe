"""The provider registry: every provider module's :data:`SPEC`, config loading with their
sections, and :func:`build_providers`.

Each provider module declares its own section, parser and factory (``SPEC``, see
``providers/_spec.py``); this module only lists the modules. Their order is the order of the
directories under the mount root.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from fusefs.config import MountConfig, parse_sections, read_toml
from fusefs.providers import enos, iotda, koodrive, roma
from fusefs.providers._auth import TokenShare
from fusefs.providers._bulk import BulkClient
from fusefs.providers._http import DEFAULT_RETRY, RetryPolicy
from fusefs.providers._spec import BuildContext, ProviderSpec
from fusefs.providers.base import Provider
from fusefs.providers.window import WindowGate

#: name → spec, in the order of the directories under the mount root.
REGISTRY: dict[str, ProviderSpec] = {m.SPEC.name: m.SPEC for m in (enos, koodrive, iotda, roma)}


def parse_config(
    data: Mapping[str, Any],
    env: Mapping[str, str] = os.environ,
    *,
    base: Path | None = None,
    path: Path | None = None,
) -> MountConfig:
    """Validate an already-parsed TOML document (see :func:`load_config`)."""
    providers = [(spec.section, spec.shared) for spec in REGISTRY.values()]
    return parse_sections(data, env, providers=providers, base=base, path=path)


def load_config(
    path: Path,
    env: Mapping[str, str] = os.environ,
    *,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> MountConfig:
    """Read and validate the TOML file at ``path``; secrets are looked up in ``env``.
    ``overrides`` (``-o`` options and flags, ``fusefs.mountopts``) replace the file's keys
    before the one validation, so either way a value gets the same check and message."""
    data = read_toml(path)
    if overrides:
        from fusefs.mountopts import overlay

        data = overlay(data, {k: dict(v) for k, v in overrides.items()})
    return parse_config(data, env, base=Path(path).resolve().parent, path=Path(path))


def build_providers(
    cfg: MountConfig,
    client: httpx.AsyncClient,
    *,
    clock: Callable[[], float] = time.time,
    retry_policy: RetryPolicy = DEFAULT_RETRY,
    bulk: BulkClient | None = None,
    window_gate: WindowGate | None = None,
    token_share: TokenShare | None = None,
) -> list[Provider]:
    """One provider per configured section (absent section = not mounted), sharing ``client``
    (API calls) and ``bulk`` (object bodies); ``window_gate``: the fleet's download windows."""
    ctx = BuildContext(cfg, client, clock, retry_policy, bulk, window_gate, token_share)
    out = []
    for name, spec in REGISTRY.items():
        section = cfg.sections.get(name)
        if section is not None:
            out.append(spec.build(ctx, section))
    return out
