"""KooDrive provider: containers → folders → files, read through presigned OBS links.

Tree (keys are opaque to the caller)::

    ""                  one DIR per configured container, name = containerId (key c/<cid>)
    c/<cid>             the container's root folder (parentFileId "root")
    d/<cid>/<folderId>  a folder (parentFileId folderId)
    f/<cid>/<fileId>    a file

Download links (``POST /koodrive/ose/v1/files/download``, ≤100 ids) are fetched in batches by
:class:`LinkBatcher` and cached per file id until shortly before the presigned URL expires. A
link that expires mid-read is replaced and the read resumes from the byte reached.
See docs/providers/koodrive.md.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import trio

from fusefs.config import Secret, Section, SectionSpec, known, tname
from fusefs.logs import excerpt
from fusefs.providers import _fields as fields
from fusefs.providers._auth import Authorize, StaticToken, TokenAuth, TokenSource
from fusefs.providers._bulk import BulkClient
from fusefs.providers._fields import ListingBudget, SkipLog, describe_item
from fusefs.providers._http import (
    DEFAULT_RETRY,
    RetryPolicy,
    Target,
    download_batch,
    download_range,
    error_for_status,
    map_http_errors,
    retry,
    short_body,
    stream_range,
)
from fusefs.providers._spec import BuildContext, ProviderSpec
from fusefs.providers.base import (
    AuthError,
    Capabilities,
    EntryKind,
    ObjectNotFound,
    ObjectRef,
    ProtocolError,
    ProviderError,
    RangeSink,
    RemoteEntry,
    TransientError,
)

log = logging.getLogger(__name__)

API = "/koodrive/ose/v1"
FOLDER_TYPE = "10"
MAX_LINKS_PER_CALL = 100
NOT_FOUND_CODES = frozenset({13000309, 13000301, 13000302, 13000411, 13000407})
TRANSIENT_CODES = frozenset({13000201, 13000408})
AUTH_CODES = frozenset({401, 13000410})


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """One configured container (``containers = [...]`` of the ``[koodrive]`` section)."""

    id: str
    group_id: str | None = None  # team space when set, personal space otherwise
    team_type: int | None = None  # ?team_type= for team spaces (0 department, 2 group)


def _code(value: object) -> int | None:
    """KooDrive sends ``code`` as an int or a string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isascii() and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _json(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


def _rejected(resp: httpx.Response) -> bool:
    """KooDrive refused the credentials: HTTP 401 or ``code`` 401 (whatever the status)."""
    if resp.status_code == 401:
        return True
    env = _json(resp)
    return isinstance(env, dict) and _code(env.get("code")) == 401


def classify_code(code: int, msg: str, call: str, status: int = 200) -> ProviderError:
    text = f"code {code}: {msg}"
    if code in NOT_FOUND_CODES:
        return ObjectNotFound(text, call=call)
    if code in AUTH_CODES or status == 401:
        return AuthError(text, call=call)
    if code in TRANSIENT_CODES or status >= 500:
        return TransientError(text, call=call)
    return ProtocolError(text, call=call)


def _link_expiry(url: str) -> float | None:
    """Wall-clock expiry of a presigned URL: X-Amz-Date + X-Amz-Expires."""
    q = parse_qs(urlsplit(url).query)
    try:
        start = datetime.strptime(q["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        return start.timestamp() + int(q["X-Amz-Expires"][0])
    except (KeyError, ValueError, IndexError):
        return None


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def link_refresh_at(url: str, fetched_at: float) -> float:
    """When to stop using a presigned URL: 80 % of its life or 60 s before expiry, the earlier.

    Life = ``X-Amz-Date`` + ``X-Amz-Expires`` from the query. Without them: 5 minutes.
    """
    # parsed by hand: this runs for every link of a batch (100 per call), and parse_qs +
    # strptime cost ~40 µs a link on the event loop
    date = _AMZ_DATE.search(url)
    expires = _AMZ_EXPIRES.search(url)
    if date is None or expires is None:
        return fetched_at + 300.0
    d = date.group(1)
    try:
        start = float(
            calendar.timegm(
                (int(d[0:4]), int(d[4:6]), int(d[6:8]), int(d[9:11]), int(d[11:13]), int(d[13:15]))
            )
        )
    except ValueError:
        return fetched_at + 300.0
    life = float(expires.group(1))
    return min(start + 0.8 * life, start + life - 60.0)


_AMZ_DATE = re.compile(r"[?&]X-Amz-Date=(\d{8}T\d{6})Z(?:&|$)")
_AMZ_EXPIRES = re.compile(r"[?&]X-Amz-Expires=(\d+)(?:&|$)")


class AppSigner:
    """KooDrive app authentication (HMAC-SHA256 over a canonical request, huawei.md §2.2.3)."""

    def __init__(
        self, app_id: str, app_secret: str, user_id: str, clock: Callable[[], float] = time.time
    ) -> None:
        self._app_id = app_id
        self._secret = app_secret.encode()
        self._user_id = user_id
        self._clock = clock

    def __repr__(self) -> str:
        return f"AppSigner(app_id={self._app_id!r}, user_id={self._user_id!r})"

    # a TokenSource without a token: each request is signed anew (a new X-Date), so a rejected
    # signature is worth one more try
    async def token(self) -> str:
        return ""

    async def invalidate(self, bad: str) -> bool:
        return True

    def sign(self, request: httpx.Request) -> None:
        request.headers.update(self.headers("", request))

    def headers(self, token: str, request: httpx.Request) -> dict[str, str]:
        """X-Date, X-User-Id and the Authorization that signs them with ``request``."""
        x_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock()))
        path = quote(request.url.path or "/", safe="/-_.~")
        if not path.endswith("/"):
            path += "/"
        pairs = sorted(
            (quote(k, safe="-_.~"), quote(v, safe="-_.~"))
            for k, v in request.url.params.multi_items()
        )
        query = "&".join(f"{k}={v}" for k, v in pairs)
        host = request.headers.get("host", request.url.netloc.decode("ascii"))
        canonical_headers = f"host:{host.strip()}\nx-date:{x_date}\nx-user-id:{self._user_id}\n"
        signed = "host;x-date;x-user-id"
        payload = hashlib.sha256(request.content).hexdigest()
        canonical = "\n".join(
            [request.method.upper(), path, query, canonical_headers, signed, payload]
        )
        to_sign = "HMAC-SHA256\n" + hashlib.sha256(canonical.encode()).hexdigest()
        sig = hmac.new(self._secret, to_sign.encode(), hashlib.sha256).hexdigest()
        authorization = f"HMAC-SHA256 AppId={self._app_id},SignedHeaders={signed},Signature={sig}"
        return {"X-Date": x_date, "X-User-Id": self._user_id, "Authorization": authorization}


@dataclass(slots=True)
class _Link:
    url: str
    refresh_at: float


@dataclass(slots=True)
class _Waiter:
    event: trio.Event = field(default_factory=trio.Event)
    done: bool = False
    link: _Link | None = None
    error: ProviderError | None = None


FetchLinks = Callable[[str, list[str]], Awaitable[dict[str, _Link | ProviderError]]]


class LinkBatcher:
    """Coalesces link requests: one call per ≤100 file ids of a container.

    The first task that needs a link for a container becomes the leader: it waits ``window``
    seconds so that other requests (and prefetch hints) join — not when the queue already holds
    a full batch —, takes up to 100 ids and makes the call. Followers wait for their result; a
    request for an id already in a call in flight joins that call (never a second call for the
    same id). If a leader is cancelled its batch goes back to the queue and a follower takes over.
    """

    def __init__(self, fetch: FetchLinks, *, window: float = 0.02) -> None:
        self._fetch = fetch
        self._window = window
        self._pending: dict[str, OrderedDict[str, list[_Waiter]]] = {}
        self._flying: dict[str, dict[str, list[_Waiter]]] = {}  # ids in the call in flight
        self._leading: set[str] = set()
        self.calls = 0

    def hint(self, container: str, file_ids: Sequence[str]) -> None:
        """Ask for these links with the next batch, if there is room (nobody waits for them)."""
        queue = self._pending.setdefault(container, OrderedDict())
        flying = self._flying.get(container, {})
        for fid in file_ids:
            if len(queue) >= MAX_LINKS_PER_CALL:
                break
            if fid not in flying:
                queue.setdefault(fid, [])

    async def get(self, container: str, file_id: str) -> _Link:
        waiter = _Waiter()
        joined = self._flying.get(container, {}).get(file_id)
        if joined is not None:  # asked for by the call in flight: wait for its answer
            joined.append(waiter)
        else:
            queue = self._pending.setdefault(container, OrderedDict())
            queue.setdefault(file_id, []).append(waiter)
        try:
            while not waiter.done:
                if container not in self._leading:
                    await self._lead(container)
                    continue
                await waiter.event.wait()
                waiter.event = trio.Event()
        finally:
            if not waiter.done:
                for where in (self._pending.get(container), self._flying.get(container)):
                    waiters = where.get(file_id) if where else None
                    if waiters is not None and waiter in waiters:
                        waiters.remove(waiter)
        if waiter.error is not None:
            raise waiter.error
        assert waiter.link is not None
        return waiter.link

    async def _lead(self, container: str) -> None:
        self._leading.add(container)
        batch: list[tuple[str, list[_Waiter]]] = []
        try:
            if len(self._pending.get(container, ())) < MAX_LINKS_PER_CALL:
                await trio.sleep(self._window)  # let more requests join, unless the batch is full
            queue = self._pending.get(container, OrderedDict())
            while queue and len(batch) < MAX_LINKS_PER_CALL:
                batch.append(queue.popitem(last=False))
            # ids whose every waiter gave up (cancelled) and that are not hints stay in the batch:
            # the link is still useful for the cache
            if not batch:
                return
            self.calls += 1
            self._flying[container] = dict(batch)
            try:
                results = await self._fetch(container, [fid for fid, _ in batch])
            except ProviderError as exc:
                for _, waiters in batch:
                    for w in waiters:
                        w.error, w.done = exc, True
                        w.event.set()
                batch = []
                return
            for fid, waiters in batch:
                # an answer without this id's link (and without an error for it) is not one
                # the API gives: a corrupt answer (EIO), not a file that is gone
                res = results.get(fid) or ProtocolError(
                    f"the answer holds no download link for {fid}", call="koodrive.download"
                )
                for w in waiters:
                    if isinstance(res, ProviderError):
                        w.error = res
                    else:
                        w.link = res
                    w.done = True
                    w.event.set()
            batch = []
        finally:
            self._leading.discard(container)
            self._flying.pop(container, None)
            queue = self._pending.setdefault(container, OrderedDict())
            for fid, waiters in reversed(batch):  # not served (cancelled leader): requeue first
                queue[fid] = waiters + queue.get(fid, [])
                queue.move_to_end(fid, last=False)
            # wake followers still queued: one of them becomes the next leader
            for waiters in queue.values():
                for w in waiters:
                    w.event.set()
            if not queue:
                self._pending.pop(container, None)


class KoodriveProvider:
    """``/koodrive``: one directory per configured container."""

    name = "koodrive"
    capabilities = Capabilities(ranged_reads=True, size_known=True, max_concurrency=8)

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        url: str,
        containers: Sequence[ContainerSpec],
        token: str | None = None,
        signer: AppSigner | None = None,
        clock: Callable[[], float] = time.time,
        retry_policy: RetryPolicy = DEFAULT_RETRY,
        batch_window: float = 0.02,
        page_size: int = 100,
        sibling_hint_ttl: float = 60.0,
        bulk: BulkClient | None = None,
    ) -> None:
        if (token is None) == (signer is None):
            raise ValueError("give exactly one of token= or signer=")
        self._client = client
        self._bulk = bulk or BulkClient()
        self._url = url.rstrip("/")
        self._containers = {c.id: c for c in containers}
        self._token = token
        self._signer = signer
        self._clock = clock
        self._retry = retry_policy
        self._page_size = page_size
        self._hint_ttl = sibling_hint_ttl
        # app auth: a fresh signature after a rejection; a fixed token: no second try
        source: TokenSource = signer if signer is not None else StaticToken(token or "")
        header: str | Authorize = signer.headers if signer is not None else "Authorization"
        self._auth = TokenAuth(source, header, _rejected, check_ok_body=True)
        self._links: dict[str, _Link] = {}
        self._siblings: dict[str, tuple[float, list[str]]] = {}  # fileId -> (listed at, siblings)
        self.batcher = LinkBatcher(self._fetch_links, window=batch_window)

    def __repr__(self) -> str:
        mode = "app" if self._signer else "token"
        cids = list(self._containers)
        return f"KoodriveProvider(url={self._url!r}, auth={mode}, containers={cids!r})"

    def describe(self, ref: ObjectRef) -> dict[str, str]:
        link = self._links.get(ref.key.rpartition("/")[2])
        if link is None:
            return {}
        expires = _link_expiry(link.url)
        out = {"link_refresh_at": _iso(link.refresh_at)}
        if expires is not None:
            out["link_expires_at"] = _iso(expires)
        return out

    async def check_auth(self) -> None:
        """The mount's start check: one page of one entry of the first container's root
        (AuthError if the token or the app signature is rejected)."""
        spec = next(iter(self._containers.values()), None)
        if spec is None:
            return
        path = f"{API}/files/0"
        if spec.group_id:  # as _list_folder asks
            path = f"{API}/files/{quote(spec.group_id, safe='')}/0"
            if spec.team_type is not None:
                path += f"?team_type={spec.team_type}"
        page = {"pageSize": 1, "pageCursor": ""}
        body = {"containerId": spec.id, "parentFileId": "root", "pageInfo": page}
        await self._api("koodrive.listFiles", path, body)

    async def aclose(self) -> None:
        pass

    # ---- the API call --------------------------------------------------------------------------

    async def _api(self, call: str, path: str, body: Mapping[str, object]) -> dict[str, Any]:
        """One call: ``_request`` (token or signature, once more after a rejection when that
        can help) then ``_parse`` (the ``code`` of the answer); transient failures retried."""
        content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()

        async def once() -> dict[str, Any]:
            return self._parse(call, await self._request(call, path, content))

        return await retry(call, once, policy=self._retry)

    async def _request(self, call: str, path: str, content: bytes) -> httpx.Response:
        log.debug("%s: POST %s", call, path)
        with map_http_errors(call) as tagged:
            return await self._client.post(
                self._url + path,
                content=content,
                headers={"Content-Type": "application/json;charset=UTF-8"},
                auth=self._auth,
                extensions=tagged,
            )

    def _parse(self, call: str, resp: httpx.Response) -> dict[str, Any]:
        env = _json(resp)
        code = _code(env.get("code")) if isinstance(env, dict) else None
        msg = excerpt(str(env.get("msg", "")), 300) if isinstance(env, dict) else ""
        if self._auth.is_rejected(resp):
            raise AuthError(f"HTTP {resp.status_code}: {msg}".rstrip(": "), call=call)
        if resp.status_code in (408, 429) or resp.status_code >= 500:
            # throttling and server errors are transient whatever the body says
            raise error_for_status(resp.status_code, call, short_body(resp.content), resp.headers)
        if code is not None and code != 0:
            raise classify_code(code, msg, call, resp.status_code)
        if resp.status_code != 200:
            raise error_for_status(resp.status_code, call, short_body(resp.content), resp.headers)
        if not isinstance(env, dict):
            raise ProtocolError("answer is not a JSON object", call=call)
        return env

    # ---- listings ------------------------------------------------------------------------------

    async def list_dir(self, key: str) -> list[RemoteEntry]:
        if key == "":
            return [
                RemoteEntry(
                    name=cid,
                    remote_id=cid,
                    kind=EntryKind.DIR,
                    key=f"c/{cid}",
                    size=0,
                    mtime_ns=0,
                    ctime_ns=0,
                    version="",
                )
                for cid in self._containers
            ]
        kind, _, rest = key.partition("/")
        if kind == "c" and rest in self._containers:
            return await self._list_folder(self._containers[rest], "root")
        cid, _, folder = rest.partition("/")
        if kind == "d" and cid in self._containers and folder:
            return await self._list_folder(self._containers[cid], folder)
        raise ObjectNotFound(f"no such directory key {key!r}", call="koodrive.list")

    async def _list_folder(self, spec: ContainerSpec, parent: str) -> list[RemoteEntry]:
        call = "koodrive.listFiles"
        if spec.group_id:
            path = f"{API}/files/{quote(spec.group_id, safe='')}/0"
            if spec.team_type is not None:
                path += f"?team_type={spec.team_type}"
        else:
            path = f"{API}/files/0"
        out: list[RemoteEntry] = []
        seen_ids: set[str] = set()
        seen_cursors: set[str] = set()
        what = f"koodrive: folder {parent} of {spec.id}"
        budget = ListingBudget(call, what)
        skips = SkipLog(log, what)
        cursor = ""
        while True:
            env = await self._api(
                call,
                path,
                {
                    "containerId": spec.id,
                    "parentFileId": parent,
                    "pageInfo": {"pageSize": self._page_size, "pageCursor": cursor},
                },
            )
            files = env.get("files")
            if not isinstance(files, list):  # null or missing is not "empty": keep the last listing
                got = "missing" if "files" not in env else type(files).__name__
                raise ProtocolError(f"the answer's files is {got}, not a list", call=call)
            budget.page(len(files))
            for f in files:
                entry = self._entry(spec.id, f, skips)
                if entry is None:
                    continue
                if entry.remote_id in seen_ids:
                    skips.skip(describe_item(f, "id"), "listed twice")
                    continue
                seen_ids.add(entry.remote_id)
                out.append(entry)
            nxt = fields.cursor(env.get("nextCursor"), call)
            if nxt is None:
                break
            if nxt in seen_cursors:
                raise ProtocolError(f"listing cursor repeats ({excerpt(nxt, 40)})", call=call)
            seen_cursors.add(nxt)
            cursor = nxt
        skips.done()
        file_ids = [e.remote_id for e in out if e.kind is EntryKind.FILE]
        now = self._clock()
        for fid in file_ids:
            self._siblings[fid] = (now, file_ids)
        return out

    def _entry(self, cid: str, f: object, skips: SkipLog) -> RemoteEntry | None:
        """One item of a listing page, every field checked; ``None`` (logged) if not valid."""
        if not isinstance(f, dict):
            skips.skip(describe_item(f), "not an object")
            return None
        try:
            fid = fields.ident(f, "id")
            recycled = f.get("recycled")
            if recycled is True:
                return None
            name = fields.text(f, "fileName", empty=True)
            is_folder = str(f.get("fileType")) == FOLDER_TYPE
            size = 0 if is_folder else fields.size(f, "size")
        except fields.BadField as exc:
            skips.skip(describe_item(f, "id", "fileName"), str(exc))
            return None
        edited = f.get("editedTime")
        mtime = skips.time_ns(edited, "editedTime")
        ctime = fields.iso_time_ns(f.get("createdTime")) or mtime
        extra = {}
        mime = fields.opt_text(f, "mimeType")
        if mime is not None:
            extra["koodrive_mime_type"] = mime
        if is_folder:
            return RemoteEntry(
                name=name,
                remote_id=fid,
                kind=EntryKind.DIR,
                key=f"d/{cid}/{fid}",
                size=0,
                mtime_ns=mtime,
                ctime_ns=ctime,
                version="",
                extra=extra,
            )
        version = f"{edited if isinstance(edited, str) else ''}:{size}"
        sha = fields.opt_text(f, "sha256")
        if sha is not None:
            version += f":{sha}"
            extra["koodrive_sha256"] = sha
        return RemoteEntry(
            name=name,
            remote_id=fid,
            kind=EntryKind.FILE,
            key=f"f/{cid}/{fid}",
            size=size,
            mtime_ns=mtime,
            ctime_ns=ctime,
            version=version,
            extra=extra,
        )

    # ---- links ---------------------------------------------------------------------------------

    async def _fetch_links(self, cid: str, file_ids: list[str]) -> dict[str, _Link | ProviderError]:
        call = "koodrive.download"
        env = await self._api(
            call, f"{API}/files/download", {"containerId": cid, "fileIds": file_ids}
        )
        now = self._clock()
        out: dict[str, _Link | ProviderError] = {}
        downloads = env.get("downloads") or []
        if not isinstance(downloads, list):
            raise ProtocolError("downloads is not a list", call=call)
        for d in downloads:
            if not isinstance(d, dict) or not isinstance(d.get("fileId"), str):
                continue
            code = _code(d.get("code", 0))
            url = d.get("url")
            if code not in (0, None) or not isinstance(url, str) or not url:
                out[d["fileId"]] = classify_code(
                    code if code is not None else -1,
                    excerpt(str(d.get("msg", "no url")), 300),
                    call,
                )
                continue
            link = _Link(url, link_refresh_at(url, now))
            self._links[d["fileId"]] = link
            out[d["fileId"]] = link
        log.debug(
            "%s: %d links for %d ids (batchCode %s)",
            call,
            len(out),
            len(file_ids),
            env.get("batchCode"),
        )
        return out

    async def download_link(self, cid: str, file_id: str, *, fresh: bool = False) -> str:
        """A valid presigned URL for ``file_id`` (cached until shortly before it expires)."""
        now = self._clock()
        link = self._links.get(file_id)
        if fresh or (link is not None and now >= link.refresh_at):
            self._links.pop(file_id, None)
            link = None
        if link is not None:
            return link.url
        # prefetch hints: siblings of a freshly listed folder that have no valid link yet
        listed = self._siblings.get(file_id)
        if listed is not None and now - listed[0] < self._hint_ttl:
            want = [
                s
                for s in listed[1]
                if s != file_id and (s not in self._links or now >= self._links[s].refresh_at)
            ]
            self.batcher.hint(cid, want[: MAX_LINKS_PER_CALL - 1])
        link = await self.batcher.get(cid, file_id)
        return link.url

    async def prepare_reads(self, refs: Sequence[ObjectRef]) -> None:
        """Links for files about to be read (a folder read in order), ≤100 per call, in order.

        Called by the cross-file read-ahead (``fusefs.vfs.sequence``) ahead of its downloads, so
        that a folder copy makes one link call per 100 files and downloads never wait for one.
        """
        now = self._clock()
        wanted: dict[str, list[str]] = {}
        for ref in refs:
            kind, _, rest = ref.key.partition("/")
            cid, _, fid = rest.partition("/")
            if kind != "f" or not fid or cid not in self._containers:
                continue
            link = self._links.get(fid)
            if link is None or now >= link.refresh_at:
                wanted.setdefault(cid, []).append(fid)
        for cid, fids in wanted.items():
            for i in range(0, len(fids), MAX_LINKS_PER_CALL):
                chunk = fids[i : i + MAX_LINKS_PER_CALL]
                self.batcher.hint(cid, chunk)
                try:
                    await self.batcher.get(cid, chunk[0])
                except ObjectNotFound:
                    continue  # that one file is gone; the others got their links

    # ---- bytes ---------------------------------------------------------------------------------

    def _link_target(self, ref: ObjectRef) -> Callable[[bool], Awaitable[Target]]:
        kind, _, rest = ref.key.partition("/")
        cid, _, fid = rest.partition("/")
        if kind != "f" or not fid:
            raise ObjectNotFound(f"not a KooDrive file key: {ref.key!r}", call="koodrive.open")

        async def get_target(stale: bool) -> Target:
            return Target(await self.download_link(cid, fid, fresh=stale), {})

        return get_target

    @staticmethod
    def _is_stale(resp: httpx.Response) -> bool:
        # 403: the link expired or was refused; 404: the file got new content, which lives
        # under a new object key: both need a fresh link from KooDrive
        return resp.status_code in (403, 404) or (
            resp.status_code == 400 and b"xpired" in resp.content[:2000]
        )

    def open_stream(
        self, ref: ObjectRef, offset: int = 0, length: int | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        get_target = self._link_target(ref)

        @asynccontextmanager
        async def cm() -> AsyncIterator[AsyncIterator[bytes]]:
            gen = stream_range(
                self._client,
                "koodrive.obsGet",
                get_target,
                offset,
                length,
                expected_size=ref.size,
                is_stale=self._is_stale,
                policy=self._retry,
            )
            try:
                yield gen
            finally:
                await gen.aclose()  # type: ignore[attr-defined]

        return cm()

    async def fetch_batch(
        self, items: Sequence[tuple[ObjectRef, RangeSink]], stop: threading.Event | None = None
    ) -> None:
        """Read-ahead of small files, whole, in one worker-thread job (``download_batch``)."""
        targets = [(self._link_target(ref), ref.size or 0, sink) for ref, sink in items]
        await download_batch(self._bulk, "koodrive.obsGet", targets, stop=stop)

    async def fetch_range(self, ref: ObjectRef, offset: int, length: int, sink: RangeSink) -> None:
        """Bytes ``[offset, offset+length)`` into ``sink``, received off the event loop."""
        await download_range(
            self._bulk,
            "koodrive.obsGet",
            self._link_target(ref),
            offset,
            length,
            sink,
            expected_size=ref.size,
            is_stale=self._is_stale,
            policy=self._retry,
        )


# ---- the [koodrive] section --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KoodriveConfig:
    url: str
    auth: Literal["token", "app"]
    containers: tuple[ContainerSpec, ...]
    token: Secret | None = None
    app_id: str | None = None
    app_secret: Secret | None = None
    user_id: str | None = None


_KEYS = {
    "url", "auth", "token_env", "token_file", "token", "app_id", "app_id_env", "app_secret_env",
    "app_secret_file", "app_secret", "user_id", "user_id_env", "containers",
}  # fmt: skip
_APP_KEYS = ("app_id", "app_id_env", "user_id", "user_id_env", "app_secret_env", "app_secret_file")
_TOKEN_KEYS = ("token_env", "token_file")


def _container(s: Section, where: str, c: object) -> ContainerSpec:
    """``"IAAD..."`` or ``{ id = "IAAD...", group_id = "1", team_type = 0 }``."""
    if isinstance(c, str) and c:
        return ContainerSpec(id=c)
    if not isinstance(c, dict):
        raise s.err(where, f"must be a table {{ id = ..., group_id = ... }}, got {tname(c)}")
    extra = sorted(set(c) - {"id", "group_id", "team_type"})
    if extra:
        raise s.err(where, f"unknown key {extra[0]!r} (known keys: group_id, id, team_type)")
    cid = c.get("id")
    if not isinstance(cid, str) or not cid:
        raise s.err(where, 'needs id = "<containerId>"')
    gid = c.get("group_id")
    if gid is not None and (isinstance(gid, bool) or not isinstance(gid, str | int)):
        raise s.err(where, f"group_id must be a string, got {tname(gid)}")
    tt = c.get("team_type")
    if tt is not None and (isinstance(tt, bool) or not isinstance(tt, int)):
        raise s.err(where, f"team_type must be an integer, got {tname(tt)}")
    return ContainerSpec(id=cid, group_id=None if gid in (None, "") else str(gid), team_type=tt)


def _containers(s: Section) -> tuple[ContainerSpec, ...]:
    raw = s.raw("containers")
    if raw is None:
        raise s.err("containers", 'missing; add containers = [{ id = "IAAD..." }]')
    if not isinstance(raw, list) or not raw:
        raise s.err(
            "containers", 'must be a non-empty list like [{ id = "IAAD...", group_id = "1" }]'
        )
    containers = tuple(_container(s, f"containers[{i}]", c) for i, c in enumerate(raw))
    if len({c.id for c in containers}) != len(containers):
        raise s.err("containers", "names a container id twice")
    return containers


def _refuse(s: Section, keys: Sequence[str], auth: str) -> None:
    """Keys of the other auth mode are a mistake, not something to ignore."""
    for k in keys:
        if s.has(k):
            raise s.err(k, f'only used with auth = "{auth}"; remove it or set auth = "{auth}"')


def parse_section(s: Section) -> KoodriveConfig:
    known(s, _KEYS)
    url = s.url("url")
    auth = s.str_("auth", "token")
    if auth not in ("token", "app"):
        raise s.err("auth", f'must be "token" or "app", got {auth!r}')
    containers = _containers(s)
    if auth == "token":
        _refuse(s, _APP_KEYS, "app")
        return KoodriveConfig(url=url, auth="token", containers=containers, token=s.secret("token"))
    _refuse(s, _TOKEN_KEYS, "token")
    return KoodriveConfig(
        url=url,
        auth="app",
        containers=containers,
        app_id=s.plain_or_env("app_id"),
        app_secret=s.secret("app_secret"),
        user_id=s.plain_or_env("user_id"),
    )


def build(ctx: BuildContext, c: KoodriveConfig) -> KoodriveProvider:
    signer: AppSigner | None = None
    token: str | None = None
    if c.auth == "app":
        assert c.app_id and c.app_secret and c.user_id
        signer = AppSigner(c.app_id, c.app_secret.reveal(), c.user_id, clock=ctx.clock)
    else:
        assert c.token is not None
        token = c.token.reveal()
    return KoodriveProvider(
        ctx.client, url=c.url, containers=c.containers, token=token, signer=signer,
        clock=ctx.clock, bulk=ctx.bulk, retry_policy=ctx.retry,
    )  # fmt: skip


SPEC = ProviderSpec(SectionSpec("koodrive", parse_section), build)
