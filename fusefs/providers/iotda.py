"""IoTDA provider: the result files of export tasks (``/iotda/exports/<id>.zip``).

No Range, no size in the listing (``size_known=False``), and at most one download per
``download_interval`` (30 s) per user: every download attempt waits for its turn in
``self.turns`` (providers/window.py: one per window, a download a reader waits for first); a 403
``IOTDA.014805`` (too frequent) defers the next turn and tries again. The vfs shows unknown sizes
as 0 and fetches listed exports in the background (``background_fetch``). See
docs/providers/iotda.md.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from fusefs.config import Section, SectionSpec, known
from fusefs.providers import _fields as fields
from fusefs.providers._fields import ListingBudget, SkipLog, describe_item
from fusefs.providers._http import (
    DEFAULT_RETRY,
    RetryPolicy,
    iter_body,
    map_http_errors,
    record_retry,
    retry,
    start_download,
)
from fusefs.providers._huawei import (
    IAM_SECTION,
    IamTokenSource,
    classify_huawei,
    huawei_error,
    iam_auth,
    iam_source,
    rejected_twice,
)
from fusefs.providers._spec import BuildContext, ProviderSpec
from fusefs.providers.base import (
    Capabilities,
    EntryKind,
    ObjectNotFound,
    ObjectRef,
    ProtocolError,
    RemoteEntry,
    TransientError,
)
from fusefs.providers.window import DownloadTurns, WindowGate

log = logging.getLogger(__name__)

RATE_LIMITED = "IOTDA.014805"
EXPORTS = "exports"


class IotdaProvider:
    """``/iotda/exports``: one ``<export_task_id>.zip`` per task with status Success."""

    name = "iotda"
    capabilities = Capabilities(ranged_reads=False, size_known=False, max_concurrency=1)

    def __init__(
        self,
        client: httpx.AsyncClient,
        iam: IamTokenSource,
        *,
        url: str,
        project_id: str | None = None,
        instance_id: str | None = None,
        resource_type: str = "BatchTask",
        download_interval: float = 30.0,
        retry_policy: RetryPolicy = DEFAULT_RETRY,
        page_size: int = 50,
        background_fetch: bool = True,
        window_gate: WindowGate | None = None,
        window_name: str = "",
    ) -> None:
        self._client = client
        self._iam = iam
        self._auth = iam_auth(iam)
        self._url = url.rstrip("/")
        self._project_id = project_id
        self._instance_id = instance_id
        self._resource_type = resource_type
        self._retry = retry_policy
        self._page_size = page_size
        # every download attempt waits for its turn here: one per window, readers first
        self.turns = DownloadTurns(
            download_interval, name=self.name, gate=window_gate, gate_name=window_name
        )
        self.background_fetch = background_fetch and download_interval > 0
        self.capabilities = Capabilities(
            ranged_reads=False,
            size_known=False,
            max_concurrency=1,
            download_interval=download_interval,
        )

    def __repr__(self) -> str:
        return f"IotdaProvider(url={self._url!r}, project_id={self._project_id!r})"

    def token_expiry(self) -> float | None:
        """When the IAM token held now expires (wall clock; ``fusefs status``)."""
        return self._iam.expires_at

    def describe(self, ref: ObjectRef) -> dict[str, str]:
        """The export's place in the download queue (one download per window)."""
        if self.turns.holder == ref.key:
            return {"iotda_download": "in progress"}
        queue = self.turns.queue()
        if ref.key not in queue:
            return {}
        ahead = queue.index(ref.key)
        return {
            "iotda_download": f"queued, {ahead} ahead",
            "iotda_download_eta": f"{self.turns.eta(ahead):.0f}s",
        }

    async def check_auth(self) -> None:
        """The mount's start check: an IAM token and the project id (AuthError if rejected)."""
        await self._iam.token()
        await self._base()

    async def aclose(self) -> None:
        pass

    async def _base(self) -> str:
        if self._project_id is None:
            self._project_id = await self._iam.project_id()
        return f"{self._url}/v5/iot/{quote(self._project_id, safe='')}/export-tasks"

    def _headers(self) -> dict[str, str]:
        return {"Instance-Id": self._instance_id} if self._instance_id else {}

    async def _get_json(self, call: str, url: str, params: dict[str, str]) -> Any:
        """One API call: ``_request`` (the IAM token, one fresh one after a rejection) then
        ``_parse`` (the error body); transient failures retried."""

        async def once() -> Any:
            return self._parse(call, await self._request(call, url, params))

        return await retry(call, once, policy=self._retry)

    async def _request(self, call: str, url: str, params: dict[str, str]) -> httpx.Response:
        log.debug("%s: GET %s %s", call, url, params)
        with map_http_errors(call) as tagged:
            return await self._client.get(
                url, params=params, headers=self._headers(), auth=self._auth, extensions=tagged
            )

    def _parse(self, call: str, resp: httpx.Response) -> Any:
        if self._auth.is_rejected(resp):
            raise rejected_twice(call)
        if resp.status_code != 200:
            raise classify_huawei(resp, call)
        try:
            return resp.json()
        except ValueError as exc:
            raise ProtocolError("answer is not JSON", call=call) from exc

    async def list_dir(self, key: str) -> list[RemoteEntry]:
        if key == "":
            return [
                RemoteEntry(
                    name=EXPORTS,
                    remote_id=EXPORTS,
                    kind=EntryKind.DIR,
                    key=EXPORTS,
                    size=0,
                    mtime_ns=0,
                    ctime_ns=0,
                    version="",
                )
            ]
        if key != EXPORTS:
            raise ObjectNotFound(f"no such directory key {key!r}", call="iotda.list")
        return await self._list_exports()

    async def _list_exports(self) -> list[RemoteEntry]:
        call = "iotda.listExportTasks"
        url = await self._base()
        out: list[RemoteEntry] = []
        seen: set[str] = set()
        marker: str | None = None
        what = "iotda: export tasks"
        budget = ListingBudget(call, what)
        skips = SkipLog(log, what)
        while True:
            params = {"resource_type": self._resource_type, "limit": str(self._page_size)}
            if marker:
                params["marker"] = marker
            body = await self._get_json(call, url, params)
            tasks = body.get("export_tasks") if isinstance(body, dict) else None
            if not isinstance(tasks, list):
                raise ProtocolError("no export_tasks list", call=call)
            budget.page(len(tasks))
            for t in tasks:
                entry = self._export_entry(t, skips)
                if entry is None:
                    continue
                if entry.remote_id in seen:
                    skips.skip(describe_item(t, "export_task_id"), "listed twice")
                    continue
                seen.add(entry.remote_id)
                out.append(entry)
            if len(tasks) < self._page_size:
                break
            page = body.get("page") if isinstance(body, dict) else None
            nxt = fields.cursor(page.get("marker"), call) if isinstance(page, dict) else None
            if nxt is None:
                last = tasks[-1]
                nxt = last.get("export_task_id") if isinstance(last, dict) else None
            if not isinstance(nxt, str) or not nxt or nxt == marker:
                raise ProtocolError("export-task paging does not advance", call=call)
            marker = nxt
        skips.done()
        return out

    def _export_entry(self, t: object, skips: SkipLog) -> RemoteEntry | None:
        """One export task of a listing page, checked; ``None`` (logged) when it is not valid,
        ``None`` (silently) when it is not a finished export (no file to show yet)."""
        if not isinstance(t, dict):
            skips.skip(describe_item(t), "not an object")
            return None
        try:
            tid = fields.ident(t, "export_task_id")
            if "/" in tid or tid in (".", ".."):
                raise fields.BadField(f"export_task_id {tid!r} is not a file name")
        except fields.BadField as exc:
            skips.skip(describe_item(t, "export_task_id"), str(exc))
            return None
        if t.get("status") != "Success":
            return None
        end = t.get("end_time")
        mtime = skips.time_ns(end, "end_time")
        return RemoteEntry(
            name=f"{tid}.zip",
            remote_id=tid,
            kind=EntryKind.FILE,
            key=f"t/{tid}",
            size=None,
            mtime_ns=mtime,
            ctime_ns=fields.iso_time_ns(t.get("create_time")) or mtime,
            version=f"{tid}@{end if isinstance(end, str) else ''}",
            extra={"iotda_resource_type": fields.opt_text(t, "resource_type") or ""},
        )

    async def _open_download(self, stack: AsyncExitStack, tid: str) -> httpx.Response:
        """Start the download (one per window, in turn); return the 200 response.

        Each attempt waits for a turn (``self.turns``): retries give the turn back, so a download
        a reader waits for can go ahead of a background one that is failing."""
        call = "iotda.downloadExportFile"
        url = f"{await self._base()}/{quote(tid, safe='')}/file"
        failures = 0
        throttled = 0
        while True:
            async with self.turns.turn(f"t/{tid}"):  # keyed as ObjectRef.key
                try:
                    resp = await start_download(
                        stack, self._client, url, self._headers(), call, auth=self._auth
                    )
                    if resp.status_code == 200:
                        return resp
                    code, _ = huawei_error(resp)
                    if resp.status_code == 403 and code == RATE_LIMITED:
                        throttled += 1
                        if throttled > self._retry.attempts:
                            # someone else spends this user's quota: give up, don't stall forever
                            raise TransientError(
                                f"{code}: still too frequent after {throttled} windows", call=call
                            )
                        # our window should have prevented this: also back off in case the
                        # server's window is longer than the configured one
                        extra = self._retry.delay(throttled)
                        log.warning(
                            "%s: %s (too frequent); waiting %.1fs",
                            call,
                            code,
                            self.turns.interval + extra,
                        )
                        self.turns.defer(self.turns.interval + extra)
                        record_retry(call)  # the wait is the turn's (counted there)
                        continue
                    raise classify_huawei(resp, call)
                except TransientError as exc:
                    failures += 1
                    if failures >= self._retry.attempts:
                        raise
                    log.warning("%s failed (%s); retry %d after the window", call, exc, failures)
                    record_retry(call)

    def open_stream(
        self, ref: ObjectRef, offset: int = 0, length: int | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        if offset != 0 or length is not None:
            raise ValueError("IoTDA export files are read whole (offset=0, length=None)")
        kind, _, tid = ref.key.partition("/")
        if kind != "t" or not tid:
            raise ObjectNotFound(f"not an IoTDA file key: {ref.key!r}", call="iotda.open")
        call = "iotda.downloadExportFile"

        @asynccontextmanager
        async def cm() -> AsyncIterator[AsyncIterator[bytes]]:
            async with AsyncExitStack() as stack:
                resp = await self._open_download(stack, tid)

                async with aclosing(iter_body(resp, call)) as gen:
                    yield gen

        return cm()


# ---- the [iotda] section -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IotdaConfig:
    url: str
    project_id: str | None = None
    instance_id: str | None = None
    resource_type: str = "BatchTask"
    download_interval: float = 30.0
    background_fetch: bool = True  # fetch every listed export, one per download_interval


def parse_section(s: Section) -> IotdaConfig:
    known(
        s,
        {"url", "project_id", "instance_id", "resource_type", "download_interval",
         "background_fetch"},
    )  # fmt: skip
    return IotdaConfig(
        url=s.url("url"),
        project_id=s.str_("project_id"),
        instance_id=s.str_("instance_id"),
        resource_type=s.str_("resource_type", "BatchTask") or "BatchTask",
        download_interval=s.float_("download_interval", 30.0, positive=False),
        background_fetch=s.bool_("background_fetch", True),
    )


def build(ctx: BuildContext, c: IotdaConfig) -> IotdaProvider:
    return IotdaProvider(
        ctx.client,
        iam_source(ctx),
        url=c.url,
        project_id=c.project_id,
        instance_id=c.instance_id,
        resource_type=c.resource_type,
        download_interval=c.download_interval,
        retry_policy=ctx.retry,
        background_fetch=c.background_fetch,
        window_gate=ctx.window_gate,
        # one window per IAM user (the quota's unit), named without the secret
        window_name=f"iotda:{ctx.cfg.iam.url}:{ctx.cfg.iam.domain}:{ctx.cfg.iam.user}",
    )


SPEC = ProviderSpec(SectionSpec("iotda", parse_section), build, shared=(IAM_SECTION,))
