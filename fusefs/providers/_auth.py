"""Token auth, one rule for every provider: get a token, call, and after a rejection one fresh
token and one more try (httpx's ``DigestAuth`` retries once on 401 the same way).

A provider gives :class:`TokenAuth` three things: where tokens come from (a :class:`TokenSource`:
EnOS's access token, Huawei IAM, a fixed KooDrive token, KooDrive's app signature), how a token
goes into a request (a header name, or a function that signs the request), and when the server
rejected it (``is_rejected``: EnOS says so in a 200 envelope, IAM with 403 codes too).

API calls pass ``auth=`` to httpx. Resumable downloads (``_http.stream_range`` and the worker
thread path ``_http.download_range``) use :meth:`TokenAuth.target`: the same source and rule.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from typing import Protocol

import httpx
import trio

from fusefs.providers._http import GetTarget, Target, call_of, record_retry

log = logging.getLogger(__name__)

#: ``authorize(token, request)``: the headers that carry ``token`` on ``request``.
Authorize = Callable[[str, httpx.Request], Mapping[str, str]]


class TokenSource(Protocol):
    """Where the tokens come from; refreshes are the source's business (single-flight)."""

    async def token(self) -> str:
        """A token believed valid now."""
        ...

    async def invalidate(self, bad: str) -> bool:
        """The server rejected ``bad``: forget it. True if the next ``token()`` may differ
        (false for a fixed token: trying again would only be rejected again)."""
        ...


class StaticToken:
    """A fixed token from the configuration (KooDrive ``auth = "token"``): nothing to renew."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "StaticToken(<hidden>)"

    async def token(self) -> str:
        return self._token

    async def invalidate(self, bad: str) -> bool:
        return False


def _set_header(name: str) -> Authorize:
    def authorize(token: str, request: httpx.Request) -> Mapping[str, str]:
        return {name: token}

    return authorize


def rejected_401(response: httpx.Response) -> bool:
    return response.status_code == 401


class TokenAuth(httpx.Auth):
    """``httpx.Auth`` that sets the token and, after a rejection, retries once with a fresh one.

    The response of the second try is returned as it is: the provider's error parsing turns a
    rejection that survived a fresh token into ``AuthError``. A response body is read only when
    ``is_rejected`` may need it (not a 2xx, or ``check_ok_body``), so a download streams.
    """

    def __init__(
        self,
        source: TokenSource,
        header: str | Authorize,
        is_rejected: Callable[[httpx.Response], bool] = rejected_401,
        *,
        check_ok_body: bool = False,
    ) -> None:
        self.source = source
        self._authorize: Authorize = header if callable(header) else _set_header(header)
        self.is_rejected = is_rejected
        self._check_ok_body = check_ok_body

    def __repr__(self) -> str:
        return f"TokenAuth({self.source!r})"

    async def authorize(self, request: httpx.Request) -> str:
        """Put a token on ``request``; return the token (to invalidate if it is rejected)."""
        token = await self.source.token()
        request.headers.update(self._authorize(token, request))
        return token

    async def renew(self, bad: str) -> bool:
        """``bad`` was rejected: True if one more try with a fresh token makes sense."""
        return await self.source.invalidate(bad)

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        raise RuntimeError("TokenAuth needs an httpx.AsyncClient")
        yield request  # pragma: no cover

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self.authorize(request)
        response = yield request
        if self._check_ok_body or not response.is_success:
            await response.aread()
        if not self.is_rejected(response) or not await self.renew(token):
            return
        log.warning(
            "%s %s: credentials rejected (HTTP %d); once more with fresh ones",
            request.method,
            request.url.path,
            response.status_code,
        )
        call = call_of(request)
        if call is not None:
            record_retry(call)
        await self.authorize(request)
        yield request

    def target(self, url: str, params: Mapping[str, str] | None = None) -> GetTarget:
        """``get_target`` for a resumable download of ``url``: ``stale=True`` (the last target was
        rejected by ``is_rejected``) invalidates the token it carried first."""
        last: list[str] = []

        async def get_target(stale: bool) -> Target:
            if stale and last:
                await self.renew(last[-1])
            request = httpx.Request("GET", url, params=params)
            token = await self.source.token()
            last[:] = [token]
            return Target(url, dict(self._authorize(token, request)), params)

        return get_target


class TokenShare(Protocol):
    """Where a fleet keeps the tokens its hosts share (opt-in: ``[fleet] share_tokens``)."""

    async def get(self, name: str) -> str | None: ...

    async def put(self, name: str, value: str, ttl: float) -> None: ...


class SharedSlot:
    """One credential's token as the fleet shares it: read before asking the token service,
    written after getting one, so a fleet does not ask once per host. ``name`` identifies the
    credential (endpoint, user), never contains a secret."""

    RECHECK = 300.0  # a shared token is looked up again this often (another host renews it)

    def __init__(self, share: TokenShare, name: str, clock: Callable[[], float]) -> None:
        self.share = share
        self.name = name
        self.clock = clock

    def __repr__(self) -> str:
        return f"SharedSlot({self.name!r})"

    async def take(
        self, rejected: str | None, margin: float
    ) -> tuple[str, float, dict[str, str]] | None:
        """(token, expires at, extra fields) another host shared, if it is not ``rejected``
        and lives longer than ``margin``."""
        raw = await self.share.get(self.name)
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
            token, expires = str(doc["token"]), float(doc["expires_at"])
            extra = {str(k): str(v) for k, v in dict(doc.get("extra", {})).items()}
        except (ValueError, KeyError, TypeError):
            log.warning("fleet: the shared token %s is not readable; getting a new one", self.name)
            return None
        if token == rejected or expires - self.clock() < margin:
            return None
        return token, expires, extra

    async def give(self, token: str, expires_at: float, margin: float, **extra: str) -> None:
        ttl = expires_at - self.clock() - margin
        if ttl > 0:
            doc = {"token": token, "expires_at": expires_at, "extra": extra}
            await self.share.put(self.name, json.dumps(doc), ttl)


class CachedToken:
    """A token source holding one token: renewed ``margin`` seconds before it expires (or at
    half its life), one renewal at a time, and, when the fleet shares tokens, taken from and
    given to its :class:`SharedSlot`. Subclasses say how a token is got (``_renew``, which
    ends with ``_keep``) and what travels with it (``_extra``/``_shared``)."""

    margin = 600.0

    def __init__(self, clock: Callable[[], float], slot: SharedSlot | None) -> None:
        self._clock = clock
        self._slot = slot
        self._lock = trio.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0
        self.expires_at: float | None = None  # of the token held (the clock's time: wall)
        self._rejected: str | None = None  # never taken again from the fleet's copy

    def _keep(self, token: str, life: float) -> None:
        now = self._clock()
        self._token = token
        self.expires_at = now + life
        self._refresh_at = now + max(life - self.margin, life / 2)

    async def _renew(self, held: str | None) -> str:
        """A new token from the service (``held``: the one held now, maybe still valid)."""
        raise NotImplementedError

    def _extra(self) -> dict[str, str]:
        return {}

    def _shared(self, extra: dict[str, str]) -> bool:
        """A token was taken from the fleet with these fields: False if they lack something
        this source needs (then it gets its own)."""
        return True

    async def token(self) -> str:
        tok = self._token
        if tok is not None and self._clock() < self._refresh_at:
            return tok
        async with self._lock:
            tok = self._token
            if tok is not None and self._clock() < self._refresh_at:
                return tok
            if self._slot is not None:
                got = await self._slot.take(self._rejected, self.margin / 2)
                if got is not None and self._shared(got[2]):
                    tok, self.expires_at = got[0], got[1]
                    self._token = tok
                    # hosts renew at different moments (between margin and margin/2 before
                    # the end): the first one's new token is taken by the others
                    early = self.margin * random.uniform(0.5, 1.0)
                    recheck = self._clock() + SharedSlot.RECHECK
                    self._refresh_at = min(self.expires_at - early, recheck)
                    return tok
            tok = await self._renew(tok)
            if self._slot is not None and self.expires_at is not None:
                await self._slot.give(tok, self.expires_at, self.margin / 2, **self._extra())
            return tok

    async def invalidate(self, bad: str) -> bool:
        """The server rejected ``bad``: the next ``token()`` gets a new one (once for many)."""
        async with self._lock:
            self._rejected = bad
            if self._token == bad:
                self._token = None
        return True
