"""What a provider module declares about itself (rclone's ``fs.RegInfo``): its config section,
the shared sections it needs, and its factory. ``fusefs.providers.registry`` lists the modules."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from fusefs.config import MountConfig, SectionSpec
from fusefs.providers._auth import TokenShare
from fusefs.providers._bulk import BulkClient
from fusefs.providers._http import DEFAULT_RETRY, RetryPolicy, meter
from fusefs.providers.base import Provider
from fusefs.providers.window import WindowGate

T = TypeVar("T")


class BuildContext:
    """What factories share: the client, the clock, the retry policy, and objects several
    providers use together (one IAM token source for IoTDA and ROMA: :meth:`shared`).

    The client gets the hooks that count its answers (``_http.meter``; no-ops without metrics)."""

    def __init__(
        self,
        cfg: MountConfig,
        client: httpx.AsyncClient,
        clock: Callable[[], float] = time.time,
        retry_policy: RetryPolicy = DEFAULT_RETRY,
        bulk: BulkClient | None = None,
        window_gate: WindowGate | None = None,
        token_share: TokenShare | None = None,
    ) -> None:
        self.cfg = cfg
        self.window_gate = window_gate  # the fleet's per-user download windows (IoTDA)
        self.token_share = token_share  # the fleet's copies of tokens ([fleet] share_tokens)
        meter(client)
        self.client = client
        self.bulk = bulk or BulkClient()
        self.clock = clock
        self.retry = retry_policy
        self._shared: dict[str, object] = {}

    def shared(self, name: str, make: Callable[[], T]) -> T:
        """The one object called ``name`` for every factory of this build (made on first use)."""
        if name not in self._shared:
            self._shared[name] = make()
        return self._shared[name]  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """One provider: its section (``[name]``, parsed into the module's config dataclass), the
    shared sections it cannot work without, and ``build(ctx, its parsed config)``."""

    section: SectionSpec
    build: Callable[[BuildContext, Any], Provider]
    shared: Sequence[SectionSpec] = ()

    @property
    def name(self) -> str:
        return self.section.name
