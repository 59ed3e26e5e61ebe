"""ROMA Connect provider: asset archives of configured export jobs, downloadable ONCE.

Tree::

    ""                      one DIR per configured instance id          key i/<instance>
    i/<instance>            DIR archives                                key a/<instance>
    a/<instance>            one FILE <archive_id>.zip per configured job whose status has an
                            archive_id (key z/<instance>/<archive_id>)

A ROMA download is never retried: the server deletes the archive once it has been sent, so a 403
``ROMA.00000101`` or a body cut midway both raise ``OneShotConsumed``. See docs/providers/roma.md.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from fusefs.config import Section, SectionSpec, known, tname
from fusefs.logs import excerpt
from fusefs.providers import _fields as fields
from fusefs.providers._fields import SkipLog
from fusefs.providers._http import (
    DEFAULT_RETRY,
    RetryPolicy,
    gather_limited,
    iter_body,
    map_http_errors,
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
    OneShotConsumed,
    ProtocolError,
    RemoteEntry,
    TransientError,
)

log = logging.getLogger(__name__)

ARCHIVES = "archives"
SUCCESS = frozenset({"succeeded", "success"})


class RomaProvider:
    """``/roma/<instance>/archives/<archive_id>.zip``."""

    name = "roma"
    capabilities = Capabilities(
        ranged_reads=False, size_known=False, one_shot=True, max_concurrency=1
    )

    def __init__(
        self,
        client: httpx.AsyncClient,
        iam: IamTokenSource,
        *,
        url: str,
        instances: dict[str, Sequence[str]],
        project_id: str | None = None,
        retry_policy: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self._client = client
        self._iam = iam
        self._auth = iam_auth(iam)
        self._url = url.rstrip("/")
        self._instances = {k: list(v) for k, v in instances.items()}
        self._project_id = project_id
        self._retry = retry_policy
        self._downloads: dict[str, str] = {}  # key -> state of its one download (describe)

    def __repr__(self) -> str:
        return f"RomaProvider(url={self._url!r}, instances={list(self._instances)!r})"

    def token_expiry(self) -> float | None:
        """When the IAM token held now expires (wall clock; ``fusefs status``)."""
        return self._iam.expires_at

    def describe(self, ref: ObjectRef) -> dict[str, str]:
        """The archive's one download as this mount saw it: ``downloading``, ``downloaded`` or
        ``consumed`` (the server would not, or no longer, send it); nothing before a try."""
        state = self._downloads.get(ref.key)
        return {"roma_download": state} if state else {}

    async def check_auth(self) -> None:
        """The mount's start check: an IAM token and the project id (AuthError if rejected)."""
        await self._iam.token()
        await self._base(next(iter(self._instances), ""))

    async def aclose(self) -> None:
        pass

    async def _base(self, instance: str) -> str:
        if self._project_id is None:
            self._project_id = await self._iam.project_id()
        return (
            f"{self._url}/v2/{quote(self._project_id, safe='')}/instances/"
            f"{quote(instance, safe='')}/assets"
        )

    async def _call(
        self, call: str, method: str, url: str, body: object = None, *, idempotent: bool = True
    ) -> Any:
        """One API call: ``_request`` (the IAM token, one fresh one after a rejection) then
        ``_parse`` (the error body); retried when idempotent."""

        async def once() -> Any:
            return self._parse(call, await self._request(call, method, url, body))

        return await retry(call, once, policy=self._retry) if idempotent else await once()

    async def _request(self, call: str, method: str, url: str, body: object) -> httpx.Response:
        log.debug("%s: %s %s", call, method, url)
        with map_http_errors(call) as tagged:
            return await self._client.request(
                method, url, json=body, auth=self._auth, extensions=tagged
            )

    def _parse(self, call: str, resp: httpx.Response) -> Any:
        if self._auth.is_rejected(resp):
            raise rejected_twice(call)
        if resp.status_code not in (200, 201, 202):
            raise classify_huawei(resp, call)
        try:
            return resp.json()
        except ValueError as exc:
            raise ProtocolError("answer is not JSON", call=call) from exc

    # ---- listings ------------------------------------------------------------------------------

    async def list_dir(self, key: str) -> list[RemoteEntry]:
        if key == "":
            return [self._dir(inst, f"i/{inst}") for inst in self._instances]
        kind, _, inst = key.partition("/")
        if inst in self._instances:
            if kind == "i":
                return [self._dir(ARCHIVES, f"a/{inst}", remote_id=f"{inst}/{ARCHIVES}")]
            if kind == "a":
                return await self._list_archives(inst)
        raise ObjectNotFound(f"no such directory key {key!r}", call="roma.list")

    @staticmethod
    def _dir(name: str, key: str, remote_id: str | None = None) -> RemoteEntry:
        return RemoteEntry(
            name=name,
            remote_id=remote_id or name,
            kind=EntryKind.DIR,
            key=key,
            size=0,
            mtime_ns=0,
            ctime_ns=0,
            version="",
        )

    async def job_status(self, instance: str, job_id: str) -> dict[str, Any]:
        url = f"{await self._base(instance)}/jobs/{quote(job_id, safe='')}"
        body = await self._call("roma.jobStatus", "GET", url)
        if not isinstance(body, dict):
            raise ProtocolError("job status is not an object", call="roma.jobStatus")
        return body

    async def _list_archives(self, inst: str) -> list[RemoteEntry]:
        jobs = self._instances[inst]
        skips = SkipLog(log, f"roma: archives of instance {inst}")

        async def one(job_id: str) -> RemoteEntry | None:
            try:
                st = await self.job_status(inst, job_id)
            except ObjectNotFound:
                log.info("roma: job %s of instance %s not found; skipped", job_id, inst)
                return None
            except ProtocolError as exc:  # this job's answer is not valid: the others still list
                skips.skip(f"job {job_id}", str(exc))
                return None
            raw_status = st.get("status")
            if not isinstance(raw_status, str):
                shown = excerpt(repr(raw_status), 60)
                skips.skip(f"job {job_id}", f"status {shown} is not a string")
                return None
            status = raw_status.lower()
            if status not in SUCCESS:
                log.debug("roma: job %s is %s; not listed yet", job_id, excerpt(status, 40))
                return None
            source: dict[str, Any] = st
            if st.get("archive_id") is None and isinstance(st.get("entities"), dict):
                source = st["entities"]
            try:
                archive = fields.ident(source, "archive_id")
            except fields.BadField as exc:
                skips.skip(f"job {job_id}", f"{status} but {exc}")
                return None
            if "/" in archive or archive in (".", ".."):
                skips.skip(f"job {job_id}", f"archive_id {excerpt(repr(archive), 60)} is not valid")
                return None
            mtime = skips.time_ns(st.get("end_time"), "end_time")
            return RemoteEntry(
                name=f"{archive}.zip",
                remote_id=archive,
                kind=EntryKind.FILE,
                key=f"z/{inst}/{archive}",
                size=None,
                mtime_ns=mtime,
                ctime_ns=fields.iso_time_ns(st.get("begin_time")) or mtime,
                version=archive,
                extra={"roma_job_id": job_id},
            )

        found = await gather_limited([functools.partial(one, j) for j in jobs], 4)
        skips.done()
        out: dict[str, RemoteEntry] = {}
        for e in found:
            if e is not None:
                out.setdefault(e.remote_id, e)
        return list(out.values())

    async def start_export(
        self, instance_id: str, apps: Sequence[str], tasks: Sequence[str]
    ) -> str:
        """Create an export job (``POST .../assets/export``); returns its job_id. Not retried."""
        url = f"{await self._base(instance_id)}/export"
        body = {"apps": [{"id": a} for a in apps], "tasks": [{"id": t} for t in tasks]}
        result = await self._call("roma.export", "POST", url, body, idempotent=False)
        job = result.get("job_id") if isinstance(result, dict) else None
        if not isinstance(job, str) or not job:
            raise ProtocolError("export answer without job_id", call="roma.export")
        return job

    # ---- bytes (once) --------------------------------------------------------------------------

    async def _open_download(self, stack: AsyncExitStack, url: str) -> httpx.Response:
        call = "roma.downloadArchive"
        # a gateway token rejection happens before the archive is touched: TokenAuth retries
        # it once with a fresh token; nothing else is ever retried
        resp = await start_download(stack, self._client, url, {}, call, auth=self._auth)
        if resp.status_code == 200:
            return resp
        code, msg = huawei_error(resp)
        if resp.status_code in (403, 404, 410) and code.startswith("ROMA."):
            raise OneShotConsumed(
                f"archive was already downloaded or has expired ({code} {msg}); "
                "it can no longer be fetched",
                call=call,
            )
        raise classify_huawei(resp, call)

    def open_stream(
        self, ref: ObjectRef, offset: int = 0, length: int | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        if offset != 0 or length is not None:
            raise ValueError("ROMA archives are read whole, once (offset=0, length=None)")
        kind, _, rest = ref.key.partition("/")
        inst, _, archive = rest.partition("/")
        if kind != "z" or not archive:
            raise ObjectNotFound(f"not a ROMA archive key: {ref.key!r}", call="roma.open")
        call = "roma.downloadArchive"

        @asynccontextmanager
        async def cm() -> AsyncIterator[AsyncIterator[bytes]]:
            async with AsyncExitStack() as stack:
                url = f"{await self._base(inst)}/archives/{quote(archive, safe='')}"
                try:
                    resp = await self._open_download(stack, url)
                except OneShotConsumed:
                    self._downloads[ref.key] = "consumed"
                    raise
                self._downloads[ref.key] = "downloading"
                cl = resp.headers.get("content-length")
                declared = int(cl) if cl and cl.isascii() and cl.isdigit() else None

                async def body() -> AsyncIterator[bytes]:
                    got = 0
                    try:
                        async with aclosing(iter_body(resp, call)) as chunks:
                            async for chunk in chunks:
                                got += len(chunk)
                                yield chunk
                    except TransientError as exc:
                        self._downloads[ref.key] = "consumed"
                        raise OneShotConsumed(
                            f"archive {archive} was cut after {got} bytes ({exc}); the server "
                            "deletes it once sent, so it can no longer be fetched",
                            call=call,
                        ) from exc
                    if declared is not None and got < declared:
                        self._downloads[ref.key] = "consumed"
                        raise OneShotConsumed(
                            f"archive {archive} was cut after {got} of {declared} bytes; the "
                            "server deletes it once sent, so it can no longer be fetched",
                            call=call,
                        )
                    self._downloads[ref.key] = "downloaded"

                gen = body()
                try:
                    yield gen
                finally:
                    await gen.aclose()  # type: ignore[attr-defined]

        return cm()


# ---- the [roma] section ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RomaInstance:
    id: str
    jobs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RomaConfig:
    url: str
    instances: tuple[RomaInstance, ...]
    project_id: str | None = None


def _instance(s: Section, where: str, inst: object) -> RomaInstance:
    if not isinstance(inst, dict):
        raise s.err(where, f'must be a table {{ id = "...", jobs = [...] }}, got {tname(inst)}')
    extra = sorted(set(inst) - {"id", "jobs"})
    if extra:
        raise s.err(where, f"unknown key {extra[0]!r} (known keys: id, jobs)")
    iid, jobs = inst.get("id"), inst.get("jobs", [])
    if not isinstance(iid, str) or not iid:
        raise s.err(where, 'needs id = "<instance id>"')
    if not isinstance(jobs, list) or not all(isinstance(j, str) and j for j in jobs):
        raise s.err(where, "jobs must be a list of job id strings")
    return RomaInstance(id=iid, jobs=tuple(dict.fromkeys(jobs)))


def parse_section(s: Section) -> RomaConfig:
    known(s, {"url", "project_id", "instances"})
    raw = s.raw("instances")
    if raw is None:
        raise s.err("instances", 'missing; add instances = [{ id = "...", jobs = ["..."] }]')
    if not isinstance(raw, list) or not raw:
        raise s.err("instances", 'must be a non-empty list like [{ id = "...", jobs = ["..."] }]')
    out = [_instance(s, f"instances[{i}]", inst) for i, inst in enumerate(raw)]
    if len({i.id for i in out}) != len(out):
        raise s.err("instances", "names an instance id twice")
    return RomaConfig(url=s.url("url"), instances=tuple(out), project_id=s.str_("project_id"))


def build(ctx: BuildContext, c: RomaConfig) -> RomaProvider:
    return RomaProvider(
        ctx.client,
        iam_source(ctx),
        url=c.url,
        instances={i.id: i.jobs for i in c.instances},
        project_id=c.project_id,
        retry_policy=ctx.retry,
    )


SPEC = ProviderSpec(SectionSpec("roma", parse_section), build, shared=(IAM_SECTION,))
