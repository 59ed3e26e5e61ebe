"""Huawei IAM token source, shared by IoTDA and ROMA (one object, one token, one refresh at a time).

``POST /v3/auth/tokens`` (password method, project scope) answers 201 with the token in the
``X-Subject-Token`` header and ``token.expires_at`` (24 h) in the body. The token is cached and
refreshed 10 minutes before it expires (or at half its life if it is shorter), and on demand after
a 401 (``invalidate``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import trio

from fusefs.providers._http import (
    DEFAULT_RETRY,
    RetryPolicy,
    error_for_status,
    map_http_errors,
    retry,
    short_body,
)
from fusefs.providers.base import AuthError, ProtocolError

log = logging.getLogger(__name__)

REFRESH_MARGIN = 600.0


def parse_iso(value: object) -> float | None:
    """ISO-8601 (``2020-01-04T09:05:22.701000Z``) → epoch seconds; ``None`` if not parseable."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def iso_to_ns(value: object) -> int:
    ts = parse_iso(value)
    return 0 if ts is None else round(ts * 1000) * 1_000_000


class IamTokenSource:
    """Caches one project-scoped IAM token; ``token()`` is single-flight."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        *,
        user: str,
        password: str,
        domain: str,
        project: str,
        clock: Callable[[], float] = time.time,
        retry_policy: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self._client = client
        self._url = url.rstrip("/") + "/v3/auth/tokens"
        self._user = user
        self._password = password
        self._domain = domain
        self._project = project
        self._clock = clock
        self._retry = retry_policy
        self._lock = trio.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0
        self._project_id: str | None = None
        self.token_requests = 0  # how many times IAM was asked (tests, stats)

    def __repr__(self) -> str:
        return f"IamTokenSource(user={self._user!r}, project={self._project!r})"

    async def token(self) -> str:
        tok = self._token
        if tok is not None and self._clock() < self._refresh_at:
            return tok
        async with self._lock:
            tok = self._token
            if tok is not None and self._clock() < self._refresh_at:
                return tok
            return await retry("iam.token", self._fetch, policy=self._retry)

    async def project_id(self) -> str:
        """The id of the scoped project, as IAM reported it with the token."""
        if self._project_id is None:
            await self.token()
        if self._project_id is None:
            raise ProtocolError("IAM token response has no token.project.id", call="iam.token")
        return self._project_id

    async def invalidate(self, bad: str) -> None:
        """The server rejected ``bad``: the next ``token()`` gets a new one (once for many)."""
        async with self._lock:
            if self._token == bad:
                self._token = None

    async def _fetch(self) -> str:
        call = "iam.token"
        body = {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {
                            "name": self._user,
                            "password": self._password,
                            "domain": {"name": self._domain},
                        }
                    },
                },
                "scope": {"project": {"name": self._project}},
            }
        }
        self.token_requests += 1
        log.debug("%s: POST %s (user %s, project %s)", call, self._url, self._user, self._project)
        with map_http_errors(call):
            resp = await self._client.post(self._url, params={"nocatalog": "true"}, json=body)
        if resp.status_code in (400, 401, 403):
            raise AuthError(
                f"IAM rejected user {self._user!r}: HTTP {resp.status_code} "
                f"{short_body(resp.content)}",
                call=call,
            )
        if resp.status_code not in (200, 201):
            raise error_for_status(resp.status_code, call, short_body(resp.content), resp.headers)
        token = resp.headers.get("x-subject-token")
        if not token:
            raise ProtocolError("no X-Subject-Token header in the IAM answer", call=call)
        now = self._clock()
        expires: float | None = None
        try:
            data: Any = resp.json()
            tok = data.get("token", {}) if isinstance(data, dict) else {}
            expires = parse_iso(tok.get("expires_at"))
            proj = tok.get("project") or {}
            if isinstance(proj, dict) and isinstance(proj.get("id"), str):
                self._project_id = proj["id"]
        except ValueError:
            log.warning("%s: token body is not JSON; assuming a 24 h token", call)
        life = (expires - now) if expires is not None else 86400.0
        if life <= 0:
            log.warning("%s: token expires_at lies in the past (clock skew?); using 10 min", call)
            life = 600.0
        self._refresh_at = now + max(life - REFRESH_MARGIN, life / 2)
        self._token = token
        log.debug("%s: new token, refresh in %.0fs", call, self._refresh_at - now)
        return str(token)
