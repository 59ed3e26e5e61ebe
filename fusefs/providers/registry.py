"""Provider registry: config section name → factory, and :func:`build_providers`."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from fusefs.config import MountConfig
from fusefs.providers._bulk import BulkClient
from fusefs.providers._http import DEFAULT_RETRY, RetryPolicy
from fusefs.providers._iam import IamTokenSource
from fusefs.providers.base import Provider
from fusefs.providers.enos import EnosProvider
from fusefs.providers.iotda import IotdaProvider
from fusefs.providers.koodrive import AppSigner, ContainerSpec, KoodriveProvider
from fusefs.providers.roma import RomaProvider


class BuildContext:
    """What factories share: the client, the clock, the retry policy and ONE IAM token source."""

    def __init__(
        self,
        cfg: MountConfig,
        client: httpx.AsyncClient,
        clock: Callable[[], float] = time.time,
        retry_policy: RetryPolicy = DEFAULT_RETRY,
        bulk: BulkClient | None = None,
    ) -> None:
        self.cfg = cfg
        self.client = client
        self.bulk = bulk or BulkClient()
        self.clock = clock
        self.retry = retry_policy
        self._iam: IamTokenSource | None = None

    def iam(self) -> IamTokenSource:
        if self._iam is None:
            iam = self.cfg.iam
            if iam is None:
                raise ValueError("IoTDA/ROMA need an [iam] section")
            self._iam = IamTokenSource(
                self.client,
                iam.url,
                user=iam.user,
                password=iam.password.reveal(),
                domain=iam.domain,
                project=iam.project,
                clock=self.clock,
                retry_policy=self.retry,
            )
        return self._iam


def _enos(ctx: BuildContext) -> Provider | None:
    c = ctx.cfg.enos
    if c is None:
        return None
    return EnosProvider(
        ctx.client,
        bulk=ctx.bulk,
        apigw_url=c.apigw_url,
        integration_url=c.integration_url,
        app_key=c.app_key,
        app_secret=c.app_secret.reveal(),
        orgs=c.orgs,
        clock=ctx.clock,
        retry_policy=ctx.retry,
    )


def _koodrive(ctx: BuildContext) -> Provider | None:
    c = ctx.cfg.koodrive
    if c is None:
        return None
    containers = [ContainerSpec(x.id, x.group_id, x.team_type) for x in c.containers]
    if c.auth == "app":
        assert c.app_id and c.app_secret and c.user_id
        signer = AppSigner(c.app_id, c.app_secret.reveal(), c.user_id, clock=ctx.clock)
        return KoodriveProvider(
            ctx.client, url=c.url, containers=containers, signer=signer, clock=ctx.clock,
            bulk=ctx.bulk,
            retry_policy=ctx.retry,
        )  # fmt: skip
    assert c.token is not None
    return KoodriveProvider(
        ctx.client, url=c.url, containers=containers, token=c.token.reveal(), clock=ctx.clock,
        bulk=ctx.bulk,
        retry_policy=ctx.retry,
    )  # fmt: skip


def _iotda(ctx: BuildContext) -> Provider | None:
    c = ctx.cfg.iotda
    if c is None:
        return None
    return IotdaProvider(
        ctx.client,
        ctx.iam(),
        url=c.url,
        project_id=c.project_id,
        instance_id=c.instance_id,
        resource_type=c.resource_type,
        download_interval=c.download_interval,
        retry_policy=ctx.retry,
        background_fetch=c.background_fetch,
    )


def _roma(ctx: BuildContext) -> Provider | None:
    c = ctx.cfg.roma
    if c is None:
        return None
    return RomaProvider(
        ctx.client,
        ctx.iam(),
        url=c.url,
        instances={i.id: i.jobs for i in c.instances},
        project_id=c.project_id,
        retry_policy=ctx.retry,
    )


ProviderFactory = Callable[[BuildContext], Provider | None]

#: name → factory; the order is the order of the directories under the mount root.
REGISTRY: dict[str, ProviderFactory] = {
    "enos": _enos,
    "koodrive": _koodrive,
    "iotda": _iotda,
    "roma": _roma,
}


def build_providers(
    cfg: MountConfig,
    client: httpx.AsyncClient,
    *,
    clock: Callable[[], float] = time.time,
    retry_policy: RetryPolicy = DEFAULT_RETRY,
    bulk: BulkClient | None = None,
) -> list[Provider]:
    """One provider per configured section (absent section = not mounted), sharing ``client``
    (API calls) and ``bulk`` (object bodies)."""
    ctx = BuildContext(cfg, client, clock, retry_policy, bulk)
    out = []
    for factory in REGISTRY.values():
        provider = factory(ctx)
        if provider is not None:
            out.append(provider)
    return out
