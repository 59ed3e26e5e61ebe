"""EnOS (Envision) provider: asset files and OTA firmware, read with ranged GETs.

Tree (keys are opaque to the caller)::

    ""                      one DIR per configured orgId (key org/<org>)
    org/<org>               one DIR per asset, Search Asset Node (key asset/<org>/<asset>)
    asset/<org>/<asset>     DIRs files (files/<org>/<asset>), firmware (firmware/<org>/<asset>)
    files/<org>/<asset>     FILE per FILE-typed attribute / measure point whose value is an
                            enos-connect:// URI, via getFileInfo (key file/<org>/<asset>/<uri>)
    firmware/<org>/<asset>  FILE per firmware of the device's product (key fw/<org>/<asset>/<id>)

See docs/providers/enos.md for the API calls and what is inferred.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import posixpath
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from fusefs.config import Secret, Section, SectionSpec, known
from fusefs.logs import excerpt
from fusefs.providers import _fields as fields
from fusefs.providers._auth import CachedToken, SharedSlot, TokenAuth, TokenShare
from fusefs.providers._bulk import BulkClient
from fusefs.providers._fields import ListingBudget, SkipLog, describe_item
from fusefs.providers._http import (
    DEFAULT_RETRY,
    RetryPolicy,
    Target,
    download_batch,
    download_range,
    error_for_status,
    gather_limited,
    is_json,
    map_http_errors,
    record_token,
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

TOKEN_PATH = "/apim-token-service/v2.0/token"
FILE_SCHEME = "enos-connect://"
NOT_FOUND_CODES = frozenset({99404, 24404, 11404, 11611, 17404})
TRANSIENT_CODES = frozenset({99500, 24500, 80500, 1005})
AUTH_CODES = frozenset({99403, 80401})
TOKEN_EXPIRED_CODES = frozenset({401, 1203})
REFRESH_MARGIN = 600.0  # refresh the token 10 min before it expires


def _ms_to_ns(value: object) -> int:
    """A time in ms (createTime) as ns; 0 when absent or not a valid time (never out of range)."""
    ns = fields.ms_time_ns(value)
    return 0 if ns is None else ns


def _i18n(value: object) -> str:
    if isinstance(value, dict):
        dv = value.get("defaultValue")
        return dv if isinstance(dv, str) else ""
    return value if isinstance(value, str) else ""


def _ext(file_url: str) -> str:
    """``enos-connect://233f7744ad002000.zip`` → ``.zip`` (``""`` without an extension)."""
    tail = file_url.split("://", 1)[-1].split("?", 1)[0]
    ext = posixpath.splitext(posixpath.basename(tail))[1]
    return ext if 1 < len(ext) <= 17 else ""


def envelope_error(env: object, call: str, status: int = 200) -> ProviderError | None:
    """Classify a v2.x envelope ``{"code", "msg", ...}``; ``None`` when ``code == 0``."""
    if not isinstance(env, dict) or "code" not in env:
        return None
    try:
        code = int(env["code"])
    except (TypeError, ValueError):
        return ProtocolError(f"envelope code {env['code']!r} is not a number", call=call)
    if code == 0:
        return None
    msg = f"code {code}: {excerpt(str(env.get('msg', '')), 300)}".rstrip(": ")
    if code in NOT_FOUND_CODES:
        return ObjectNotFound(msg, call=call)
    if code in AUTH_CODES or code in TOKEN_EXPIRED_CODES:
        return AuthError(msg, call=call)
    if code in TRANSIENT_CODES or status >= 500:
        return TransientError(msg, call=call)
    return ProtocolError(msg, call=call)


# No answer of the APIs fusefs calls is this big (a page of 200 entries is well under 1 MiB):
# a bigger one is refused before it is decoded (decoding runs on the event loop)
MAX_ENVELOPE = 8 << 20


def _envelope(resp: httpx.Response) -> Any:
    """The JSON body of an answer (``None`` when it is not JSON, or too big to be one of
    ours), decoded once per answer (the token check and the parse both look at it)."""
    cached = getattr(resp, "_fusefs_envelope", _UNSET)
    if cached is not _UNSET:
        return cached
    env = None
    if len(resp.content) <= MAX_ENVELOPE and (is_json(resp) or resp.content[:1] == b"{"):
        try:
            env = resp.json()
        except ValueError:
            env = None
    resp._fusefs_envelope = env  # type: ignore[attr-defined]
    return env


_UNSET = object()


def token_rejected(resp: httpx.Response) -> bool:
    """The gateway refused the token: HTTP 401, or an envelope code 401/1203 (even in a 200)."""
    if resp.status_code == 401:
        return True
    env = _envelope(resp)
    return isinstance(env, dict) and env.get("code") in TOKEN_EXPIRED_CODES


class EnosAuth(CachedToken):
    """The ``apim-accesstoken``: fetched, cached, refreshed 10 min early; one refresh at a time."""

    margin = REFRESH_MARGIN

    def __init__(
        self,
        client: httpx.AsyncClient,
        apigw_url: str,
        app_key: str,
        app_secret: str,
        *,
        clock: Callable[[], float] = time.time,
        retry_policy: RetryPolicy = DEFAULT_RETRY,
        share: TokenShare | None = None,
    ) -> None:
        # the fleet's copy of this app's token (opt-in), named without the secret
        name = f"enos:{apigw_url}:{app_key}"
        super().__init__(clock, SharedSlot(share, name, clock) if share is not None else None)
        self._client = client
        self._url = apigw_url.rstrip("/") + TOKEN_PATH
        self._app_key = app_key
        self._secret = app_secret
        self._retry = retry_policy
        self._last_ts = 0
        self.token_requests = 0

    def __repr__(self) -> str:
        return f"EnosAuth(app_key={self._app_key!r})"

    async def _renew(self, held: str | None) -> str:
        """Refresh the token held while it is valid (EnOS's refresh call), else get a new one."""
        if held is not None and self.expires_at is not None and self._clock() < self.expires_at - 5:
            try:
                return await retry(
                    "enos.token.refresh", lambda: self._fetch("refresh", held), policy=self._retry
                )
            except (AuthError, ProtocolError) as exc:
                log.warning("enos.token.refresh failed (%s); getting a new token", exc)
        return await retry("enos.token.get", lambda: self._fetch("get", None), policy=self._retry)

    def headers(self, token: str, request: httpx.Request) -> dict[str, str]:
        """The ``apim-*`` headers of ``request`` (its query and body are signed)."""
        params = dict(request.url.params.multi_items())
        return self.sign(token, params, request.content)

    def sign(self, token: str, params: Mapping[str, str], body: bytes) -> dict[str, str]:
        """``apim-*`` headers: sha256(token + sorted params + body + timestamp + secret)."""
        ts = str(int(self._clock() * 1000))
        params_data = "".join(f"{k}{params[k]}" for k in sorted(params))
        sign_data = token + params_data + body.decode("utf-8") + ts + self._secret
        return {
            "apim-accesstoken": token,
            "apim-timestamp": ts,
            "apim-signature": hashlib.sha256(sign_data.encode("utf-8")).hexdigest(),
        }

    async def _fetch(self, action: str, old: str | None) -> str:
        call = f"enos.token.{action}"
        ts = max(int(self._clock() * 1000), self._last_ts + 1)  # a reused timestamp is a replay
        self._last_ts = ts
        enc = hashlib.sha256(f"{self._app_key}{ts}{self._secret}".encode()).hexdigest()
        body: dict[str, object] = {"appKey": self._app_key, "encryption": enc, "timestamp": ts}
        if old is not None:
            body["accessToken"] = old
        self.token_requests += 1
        log.debug("%s: POST %s/%s", call, self._url, action)
        with map_http_errors(call) as tagged:
            resp = await self._client.post(f"{self._url}/{action}", json=body, extensions=tagged)
        if resp.status_code != 200:
            err = error_for_status(resp.status_code, call, short_body(resp.content), resp.headers)
            raise err
        try:
            env = resp.json()
        except ValueError as exc:
            raise ProtocolError("token answer is not JSON", call=call) from exc
        status = env.get("status", env.get("stauts")) if isinstance(env, dict) else None
        if status != 0:
            msg = f"status {status}: {env.get('msg', '') if isinstance(env, dict) else ''}"
            if status in (1001, 1005):
                raise TransientError(msg, call=call)
            if status in (1002, 1003, 1203, 1204):
                raise AuthError(msg, call=call)
            raise ProtocolError(msg, call=call)
        data = env.get("data") or {}
        token = data.get("accessToken") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise ProtocolError("token answer without data.accessToken", call=call)
        try:
            expire = float(data.get("expire", 7200))
        except (TypeError, ValueError):
            expire = 7200.0
        record_token(call)
        self._keep(token, expire)
        log.debug("%s: token valid %.0fs", call, expire)
        return token


@dataclass(frozen=True, slots=True)
class _DownloadSpec:
    call: str
    get_target: Callable[[bool], Awaitable[Target]]
    classify: Callable[[httpx.Response, str], ProviderError | None]
    json_error: Callable[[bytes], ProviderError | None]


@dataclass(slots=True)
class _OrgInfo:
    fetched_at: float
    assets: dict[str, dict[str, Any]] = field(default_factory=dict)
    product_keys: dict[str, str] = field(default_factory=dict)  # assetId -> productKey (devices)


class EnosProvider:
    """``/enos``: org → asset → ``files`` / ``firmware``."""

    name = "enos"
    capabilities = Capabilities(ranged_reads=True, size_known=True, max_concurrency=4)

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        apigw_url: str,
        app_key: str,
        app_secret: str,
        orgs: list[str] | tuple[str, ...],
        integration_url: str | None = None,
        clock: Callable[[], float] = time.time,
        retry_policy: RetryPolicy = DEFAULT_RETRY,
        metadata_ttl: float = 30.0,
        file_info_concurrency: int = 8,
        page_size: int = 100,
        bulk: BulkClient | None = None,
        token_share: TokenShare | None = None,
    ) -> None:
        self._client = client
        self._bulk = bulk or BulkClient()
        self._apigw = apigw_url.rstrip("/")
        self._integ = (integration_url or apigw_url).rstrip("/")
        self._orgs = list(orgs)
        self._clock = clock
        self._retry = retry_policy
        self._meta_ttl = metadata_ttl
        self._fi_limit = file_info_concurrency
        self._page_size = page_size
        self.auth = EnosAuth(
            client,
            apigw_url,
            app_key,
            app_secret,
            clock=clock,
            retry_policy=retry_policy,
            share=token_share,
        )
        # every call: the access token, signed; a fresh one after a rejection (a 401, or a 200
        # envelope whose code says the token expired)
        self._auth = TokenAuth(self.auth, self.auth.headers, token_rejected, check_ok_body=True)
        self._org_info: dict[str, _OrgInfo] = {}
        self._models: dict[tuple[str, str], dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"EnosProvider(apigw={self._apigw!r}, orgs={self._orgs!r})"

    def token_expiry(self) -> float | None:
        """When the access token held now expires (wall clock; ``fusefs status``)."""
        return self.auth.expires_at if self.auth._token is not None else None

    def describe(self, ref: ObjectRef) -> dict[str, str]:
        """Nothing live per object: every download is signed on the spot, by file URI or
        firmware id, so no link expires (KooDrive's do)."""
        return {}

    async def check_auth(self) -> None:
        """The mount's start check: one access token (AuthError if the app key is rejected)."""
        await self.auth.token()

    async def aclose(self) -> None:
        pass

    # ---- the API call --------------------------------------------------------------------------

    async def _api(
        self,
        call: str,
        method: str,
        url: str,
        params: dict[str, str],
        body: object = None,
    ) -> dict[str, Any]:
        """One envelope call: ``_request`` (token, signature, one fresh token after a
        rejection) then ``_parse`` (the envelope); transient failures retried."""
        content = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()

        async def once() -> dict[str, Any]:
            return self._parse(call, await self._request(call, method, url, params, content))

        return await retry(call, once, policy=self._retry)

    async def _request(
        self, call: str, method: str, url: str, params: dict[str, str], content: bytes
    ) -> httpx.Response:
        headers = {"Content-Type": "application/json;charset=UTF-8"} if content else {}
        log.debug("%s: %s %s %s", call, method, url, params.get("action", ""))
        with map_http_errors(call) as tagged:
            return await self._client.request(
                method, url, params=params, content=content or None, headers=headers,
                auth=self._auth, extensions=tagged,
            )  # fmt: skip

    def _parse(self, call: str, resp: httpx.Response) -> dict[str, Any]:
        if self._auth.is_rejected(resp):
            raise AuthError("token rejected even after a fresh one", call=call)
        if resp.status_code in (408, 429) or resp.status_code >= 500:
            raise error_for_status(resp.status_code, call, short_body(resp.content), resp.headers)
        if len(resp.content) > MAX_ENVELOPE:
            raise ProtocolError(
                f"an answer of {len(resp.content):,} bytes: larger than any page "
                f"({MAX_ENVELOPE:,} at most)",
                call=call,
            )
        env = _envelope(resp)
        err = envelope_error(env, call, resp.status_code)
        if err is not None:
            raise err
        if resp.status_code != 200:
            raise error_for_status(resp.status_code, call, short_body(resp.content), resp.headers)
        if not isinstance(env, dict):
            raise ProtocolError("answer is not a JSON envelope", call=call)
        return env

    async def _paged(
        self, call: str, url: str, org: str, action: str, body: dict[str, object], page_size: int
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        what = f"enos: {action} of org {org}"
        budget = ListingBudget(call, what)
        skips = SkipLog(log, what)
        page = 1
        while True:
            env = await self._api(
                call,
                "POST",
                url,
                {"action": action, "orgId": org},
                {**body, "pagination": {"pageNo": page, "pageSize": page_size}},
            )
            data = env.get("data")
            pag = env.get("pagination") or {}
            total = pag.get("totalSize", pag.get("totalSzie")) if isinstance(pag, dict) else None
            if data is None and total == 0:
                data = []  # nothing found, said plainly
            if not isinstance(data, list):  # null or missing is not "empty": keep the last listing
                got = "missing" if "data" not in env else type(data).__name__
                raise ProtocolError(f"data is {got}, not a list", call=call)
            if len(data) > page_size:  # before any work per entry: its cost is the server's call
                raise ProtocolError(
                    f"a page of {len(data)} entries, asked for {page_size}", call=call
                )
            budget.page(len(data))
            for d in data:
                if isinstance(d, dict):
                    out.append(d)
                else:
                    skips.skip(describe_item(d), "not an object")
            if not data:
                break
            if isinstance(total, int) and not isinstance(total, bool):
                if page * page_size >= total:
                    break
            elif len(data) < page_size:
                break
            page += 1
        skips.done()
        return out

    # ---- listings ------------------------------------------------------------------------------

    async def list_dir(self, key: str) -> list[RemoteEntry]:
        if key == "":
            return [self._dir(org, org, f"org/{org}") for org in self._orgs]
        kind, _, rest = key.partition("/")
        if kind == "org" and rest in self._orgs:
            return await self._list_org(rest)
        parts = rest.split("/", 1)
        if len(parts) == 2 and parts[0] in self._orgs:
            org, asset = parts
            if kind == "asset":
                return [
                    self._dir("files", f"{asset}/files", f"files/{org}/{asset}"),
                    self._dir("firmware", f"{asset}/firmware", f"firmware/{org}/{asset}"),
                ]
            if kind == "files":
                return await self._list_files(org, asset)
            if kind == "firmware":
                return await self._list_firmware(org, asset)
        raise ObjectNotFound(f"no such directory key {key!r}", call="enos.list")

    @staticmethod
    def _dir(name: str, remote_id: str, key: str, mtime_ns: int = 0) -> RemoteEntry:
        return RemoteEntry(
            name=name,
            remote_id=remote_id,
            kind=EntryKind.DIR,
            key=key,
            size=0,
            mtime_ns=mtime_ns,
            ctime_ns=mtime_ns,
            version="",
        )

    async def _load_org(self, org: str) -> _OrgInfo:
        assets_call = "enos.searchAsset"
        devices_call = "enos.searchDevice"
        assets, devices = await gather_limited(
            [
                lambda: self._paged(
                    assets_call,
                    f"{self._apigw}/asset-tree-service/v2.1/asset-nodes",
                    org,
                    "searchAsset",
                    {},
                    self._page_size,
                ),
                lambda: self._paged(
                    devices_call,
                    f"{self._apigw}/connect-service/v2.1/devices",
                    org,
                    "search",
                    {},
                    min(self._page_size, 200),
                ),
            ],
            2,
        )
        info = _OrgInfo(fetched_at=self._clock())
        skips = SkipLog(log, f"enos: assets of org {org}")
        for a in assets:
            try:
                info.assets[fields.ident(a, "assetId")] = a
            except fields.BadField as exc:
                skips.skip(describe_item(a, "assetId", "name"), str(exc))
        for d in devices:
            try:
                aid = fields.ident(d, "assetId")
            except fields.BadField as exc:
                skips.skip(describe_item(d, "assetId", "deviceKey"), str(exc))
                continue
            pk = fields.opt_text(d, "productKey")
            if pk is not None:
                info.product_keys[aid] = pk
            info.assets.setdefault(aid, d)
        skips.done()
        self._org_info[org] = info
        return info

    async def _list_org(self, org: str) -> list[RemoteEntry]:
        info = await self._load_org(org)
        out = []
        for aid, a in sorted(info.assets.items()):
            extra = {"enos_asset_name": _i18n(a.get("name") or a.get("deviceName"))}
            if isinstance(a.get("modelId"), str):
                extra["enos_model_id"] = a["modelId"]
            if aid in info.product_keys:
                extra["enos_product_key"] = info.product_keys[aid]
            ts = _ms_to_ns(a.get("createTime"))
            out.append(
                RemoteEntry(
                    name=aid,
                    remote_id=aid,
                    kind=EntryKind.DIR,
                    key=f"asset/{org}/{aid}",
                    size=0,
                    mtime_ns=ts,
                    ctime_ns=ts,
                    version="",
                    extra=extra,
                )
            )
        return out

    def _fresh_org(self, org: str) -> _OrgInfo | None:
        info = self._org_info.get(org)
        if info is not None and self._clock() - info.fetched_at < self._meta_ttl:
            return info
        return None

    async def _asset(self, org: str, asset: str) -> dict[str, Any]:
        info = self._fresh_org(org)
        if info is not None and asset in info.assets and "attributes" in info.assets[asset]:
            return info.assets[asset]
        env = await self._api(
            "enos.getAsset",
            "GET",
            f"{self._apigw}/asset-service/v2.1/assets",
            {"action": "get", "orgId": org, "assetId": asset},
        )
        data = env.get("data")
        if not isinstance(data, dict):
            raise ObjectNotFound(f"asset {asset} not found", call="enos.getAsset")
        return data

    async def _model(self, org: str, model_id: str) -> dict[str, Any]:
        cached = self._models.get((org, model_id))
        if cached is not None:
            return cached
        env = await self._api(
            "enos.getThingModel",
            "GET",
            f"{self._apigw}/model-service/v2.1/thing-models",
            {"action": "get", "orgId": org, "modelId": model_id},
        )
        data = env.get("data")
        model = data if isinstance(data, dict) else {}
        self._models[(org, model_id)] = model
        return model

    @staticmethod
    def _file_features(model: dict[str, Any], section: str) -> list[str]:
        feats = model.get(section) or {}
        if not isinstance(feats, dict):
            return []
        return sorted(
            fid
            for fid, f in feats.items()
            if isinstance(f, dict) and str(f.get("dataType", "")).upper() == "FILE"
        )

    async def _latest_points(self, org: str, asset: str, points: list[str]) -> dict[str, object]:
        env = await self._api(
            "enos.queryLatest",
            "POST",
            f"{self._apigw}/connect-service/v2.1/measurepoints",
            {"action": "queryLatest", "orgId": org, "assetId": asset},
            {"measurepointIds": points},
        )
        data = env.get("data")
        items: list[Any] = []
        if isinstance(data, list):
            items = data
        elif isinstance(data, dict):
            inner = data.get("items") or data.get("measurepoints")
            items = inner if isinstance(inner, list) else []
            if not items and all(isinstance(k, str) for k in data):
                return dict(data)
        out: dict[str, object] = {}
        for item in items:
            if isinstance(item, dict):
                pid = item.get("id", item.get("measurepointId", item.get("pointId")))
                if isinstance(pid, str):
                    out[pid] = item.get("value")
        return out

    async def _file_info(self, org: str, asset: str, uri: str) -> dict[str, Any] | None:
        try:
            env = await self._api(
                "enos.getFileInfo",
                "GET",
                f"{self._integ}/connect-service/v2.1/files",
                {
                    "action": "getFileInfo",
                    "orgId": org,
                    "fileUri": uri,
                    "category": "feature",
                    "assetId": asset,
                },
            )
        except ObjectNotFound:
            log.debug("enos.getFileInfo: %s of asset %s is gone; skipped", uri, asset)
            return None
        data = env.get("data")
        if not isinstance(data, dict):
            raise ProtocolError("getFileInfo without data", call="enos.getFileInfo")
        return data

    async def _list_files(self, org: str, asset: str) -> list[RemoteEntry]:
        a = await self._asset(org, asset)
        attrs = a.get("attributes") or {}
        if not isinstance(attrs, dict):
            attrs = {}
        model_id = a.get("modelId")
        model: dict[str, Any] = {}
        if isinstance(model_id, str) and model_id:
            try:
                model = await self._model(org, model_id)
            except ObjectNotFound:
                log.warning("enos: thing model %s of asset %s not found", model_id, asset)
        uris: dict[str, str] = {}  # uri -> feature it came from (first wins)
        if model:
            for aid in self._file_features(model, "attributes"):
                v = attrs.get(aid)
                if isinstance(v, str) and v.startswith(FILE_SCHEME):
                    uris.setdefault(v, f"attribute:{aid}")
            points = self._file_features(model, "measurepoints")
            if points:
                for pid, v in sorted((await self._latest_points(org, asset, points)).items()):
                    if pid in points and isinstance(v, str) and v.startswith(FILE_SCHEME):
                        uris.setdefault(v, f"measurepoint:{pid}")
        else:  # no model: any attribute holding a stored-file URI
            for aid, v in sorted(attrs.items()):
                if isinstance(v, str) and v.startswith(FILE_SCHEME):
                    uris.setdefault(v, f"attribute:{aid}")
        skips = SkipLog(log, f"enos: files of asset {asset}")
        for uri in [u for u in uris if fields.has_control(u)]:
            skips.skip(repr(uri), "the file URI holds control characters")
            del uris[uri]
        ordered = sorted(uris)

        async def info_of(uri: str) -> dict[str, Any] | str | None:
            try:
                return await self._file_info(org, asset, uri)
            except ProtocolError as exc:  # this one file's answer is not valid: skip it
                return str(exc)

        infos = await gather_limited(
            [functools.partial(info_of, u) for u in ordered], self._fi_limit
        )
        out = []
        for uri, info in zip(ordered, infos, strict=True):
            if info is None:
                continue
            if isinstance(info, str):
                skips.skip(repr(uri), info)
                continue
            try:
                name = fields.text(info, "originalFilename", empty=True)
                size = fields.size(info, "fileSize")
            except fields.BadField as exc:
                skips.skip(repr(uri), f"getFileInfo: {exc}")
                continue
            md5 = fields.opt_text(info, "md5")
            created = info.get("createTime")
            ts = _ms_to_ns(created)
            if ts == 0 and created is not None:
                skips.note("a createTime that is not a valid time (shown as 0)")
            out.append(
                RemoteEntry(
                    name=name,
                    remote_id=uri,
                    kind=EntryKind.FILE,
                    key=f"file/{org}/{asset}/{uri}",
                    size=size,
                    mtime_ns=ts,
                    ctime_ns=ts,
                    version=md5 or f"{uri}@{created}",
                    md5=md5,
                    extra={"enos_file_uri": uri, "enos_feature": uris[uri]},
                )
            )
        skips.done()
        return out

    async def _product_key(self, org: str, asset: str) -> str | None:
        info = self._fresh_org(org)
        if info is not None and asset in info.assets:
            return info.product_keys.get(asset)
        try:
            env = await self._api(
                "enos.getDevice",
                "GET",
                f"{self._apigw}/connect-service/v2.1/devices",
                {"action": "get", "orgId": org, "assetId": asset},
            )
        except ObjectNotFound:
            return None  # a logical asset, not a device
        data = env.get("data")
        pk = data.get("productKey") if isinstance(data, dict) else None
        return pk if isinstance(pk, str) and pk else None

    def _firmware_entry(
        self, org: str, asset: str, fw: dict[str, Any], skips: SkipLog | None = None
    ) -> RemoteEntry | None:
        try:
            fid = fields.ident(fw, "firmwareId")
            size = fields.size(fw, "fileSize")
        except fields.BadField as exc:
            (skips or SkipLog(log, f"enos: firmware of asset {asset}")).skip(
                describe_item(fw, "firmwareId"), str(exc)
            )
            return None
        url = fields.opt_text(fw, "fileUrl") or ""
        fw_version = fw.get("version")
        version_text = fw_version if isinstance(fw_version, str) else ""
        name = f"{_i18n(fw.get('name'))}-{version_text}{_ext(url)}"
        sign = fw.get("sign")
        md5 = (
            sign
            if isinstance(sign, str) and str(fw.get("signMethod", "")).lower() == "md5"
            else None
        )
        created = fw.get("createTime")
        ts = _ms_to_ns(created)
        extra = {"enos_firmware_id": fid, "enos_file_url": url}
        if version_text:
            extra["enos_firmware_version"] = version_text
        return RemoteEntry(
            name=name,
            remote_id=fid,
            kind=EntryKind.FILE,
            key=f"fw/{org}/{asset}/{fid}",
            size=size,
            mtime_ns=ts,
            ctime_ns=ts,
            version=sign if isinstance(sign, str) and sign else f"{fid}@{created}",
            md5=md5,
            extra=extra,
        )

    async def _list_firmware(self, org: str, asset: str) -> list[RemoteEntry]:
        pk = await self._product_key(org, asset)
        if pk is None:
            return []
        fws = await self._paged(
            "enos.searchFirmware",
            f"{self._apigw}/connect-service/v2.1/ota-firmwares",
            org,
            "search",
            {"expression": f"productKey='{pk}'"},
            min(self._page_size, 200),
        )
        out = []
        skips = SkipLog(log, f"enos: firmware of asset {asset}")
        seen: set[str] = set()
        for fw in fws:
            if fw.get("productKey") not in (None, pk):
                continue
            entry = self._firmware_entry(org, asset, fw, skips)
            if entry is None:
                continue
            if entry.remote_id in seen:
                skips.skip(describe_item(fw, "firmwareId"), "listed twice")
                continue
            seen.add(entry.remote_id)
            out.append(entry)
        skips.done()
        return out

    # ---- versions and bytes --------------------------------------------------------------------

    @staticmethod
    def _parse_file_key(key: str) -> tuple[str, str, str, str]:
        kind, _, rest = key.partition("/")
        parts = rest.split("/", 2)
        if kind not in ("file", "fw") or len(parts) != 3:
            raise ObjectNotFound(f"not an EnOS file key: {key!r}", call="enos.open")
        return kind, parts[0], parts[1], parts[2]

    def _download_spec(self, ref: ObjectRef) -> _DownloadSpec:
        kind, org, asset, ident = self._parse_file_key(ref.key)
        if kind == "file":
            call = "enos.downloadFile"
            url = f"{self._integ}/connect-service/v2.1/files"
            params = {
                "action": "download",
                "orgId": org,
                "fileUri": ident,
                "category": "feature",
                "assetId": asset,
            }
        else:
            call = "enos.downloadFirmwareFile"
            url = f"{self._integ}/connect-service/v2.5/files"
            params = {"action": "downloadFirmwareFile", "orgId": org, "firmwareId": ident}
        get_target = self._auth.target(url, params)

        def classify(resp: httpx.Response, call: str) -> ProviderError | None:
            try:
                env = resp.json()
            except ValueError:
                return None
            return envelope_error(env, call, resp.status_code)

        def json_error(content: bytes) -> ProviderError | None:
            try:
                env = json.loads(content)
            except ValueError:
                return None
            return envelope_error(env, call)

        return _DownloadSpec(call, get_target, classify, json_error)

    def open_stream(
        self, ref: ObjectRef, offset: int = 0, length: int | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        spec = self._download_spec(ref)

        @asynccontextmanager
        async def cm() -> AsyncIterator[AsyncIterator[bytes]]:
            gen = stream_range(
                self._client,
                spec.call,
                spec.get_target,
                offset,
                length,
                expected_size=ref.size,
                classify=spec.classify,
                is_stale=self._auth.is_rejected,
                json_error=spec.json_error,
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
        by_call: dict[str, list[tuple[_DownloadSpec, ObjectRef, RangeSink]]] = {}
        for ref, sink in items:  # attribute files and firmware: one job each
            spec = self._download_spec(ref)
            by_call.setdefault(spec.call, []).append((spec, ref, sink))
        for call, group in by_call.items():
            targets = [(spec.get_target, ref.size or 0, sink) for spec, ref, sink in group]
            await download_batch(
                self._bulk, call, targets, json_error=group[0][0].json_error, stop=stop
            )

    async def fetch_range(self, ref: ObjectRef, offset: int, length: int, sink: RangeSink) -> None:
        """Bytes ``[offset, offset+length)`` into ``sink``, received off the event loop."""
        spec = self._download_spec(ref)
        await download_range(
            self._bulk,
            spec.call,
            spec.get_target,
            offset,
            length,
            sink,
            expected_size=ref.size,
            classify=spec.classify,
            is_stale=self._auth.is_rejected,
            json_error=spec.json_error,
            policy=self._retry,
        )


# ---- the [enos] section ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnosConfig:
    apigw_url: str
    integration_url: str
    app_key: str
    app_secret: Secret
    orgs: tuple[str, ...]


def parse_section(s: Section) -> EnosConfig:
    known(
        s,
        {"apigw_url", "integration_url", "app_key", "app_key_env", "app_secret_env",
         "app_secret_file", "app_secret", "orgs"},
    )  # fmt: skip
    apigw = s.url("apigw_url")
    return EnosConfig(
        apigw_url=apigw,
        integration_url=s.url("integration_url", apigw),
        app_key=s.plain_or_env("app_key"),
        app_secret=s.secret("app_secret"),
        orgs=s.str_list("orgs"),
    )


def build(ctx: BuildContext, c: EnosConfig) -> EnosProvider:
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
        token_share=ctx.token_share,
    )


SPEC = ProviderSpec(SectionSpec("enos", parse_section), build)
