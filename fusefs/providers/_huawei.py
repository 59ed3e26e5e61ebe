"""What IoTDA and ROMA share: Huawei IAM (its ``[iam]`` section and one token source), the
gateway's token rule and the error bodies of Huawei APIs.

IAM: ``POST /v3/auth/tokens`` (password method, project scope) answers 201 with the token in the
``X-Subject-Token`` header and ``token.expires_at`` (24 h) in the body. The token is cached and
refreshed 10 minutes before it expires (or at half its life if it is shorter), and on demand after
a rejection (``invalidate``). One source serves every provider of a mount (:func:`iam_source`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from fusefs.config import Secret, Section, SectionSpec, known
from fusefs.providers import _fields as fields
from fusefs.providers._auth import CachedToken, SharedSlot, TokenAuth, TokenShare
from fusefs.providers._http import (
    DEFAULT_RETRY,
    RetryPolicy,
    error_for_status,
    map_http_errors,
    record_token,
    retry,
    short_body,
)
from fusefs.providers._spec import BuildContext
from fusefs.providers.base import (
    AuthError,
    ObjectNotFound,
    ProtocolError,
    ProviderError,
    TransientError,
)

log = logging.getLogger(__name__)

REFRESH_MARGIN = 600.0
NOT_FOUND = frozenset({"IOTDA.014802"})
#: a token the gateway (APIG) or IoTDA rejects: one fresh token, then AuthError
AUTH_CODES = frozenset({"IOTDA.000002", "IOTDA.000004", "APIG.0301", "APIG.0307"})
THROTTLED = frozenset({"IOTDA.021101", "IOTDA.021102"})


# ---- the [iam] section -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IamConfig:
    url: str
    user: str
    domain: str
    project: str
    password: Secret


def parse_iam(s: Section) -> IamConfig:
    known(s, {"url", "user", "domain", "project", "password_env", "password_file", "password"})
    return IamConfig(
        url=s.url("url", "https://iam.myhuaweicloud.com"),
        user=s.req_str("user"),
        domain=s.req_str("domain"),
        project=s.req_str("project"),
        password=s.secret("password"),
    )


IAM_SECTION = SectionSpec(
    "iam", parse_iam, what="IAM credentials", keys_hint="url, user, domain, project, password_env"
)


def iam_source(ctx: BuildContext) -> IamTokenSource:
    """The mount's one IAM token source (IoTDA and ROMA share its token)."""

    def make() -> IamTokenSource:
        iam = ctx.cfg.sections.get("iam")
        if not isinstance(iam, IamConfig):
            raise ValueError("IoTDA/ROMA need an [iam] section")
        return IamTokenSource(
            ctx.client,
            iam.url,
            user=iam.user,
            password=iam.password.reveal(),
            domain=iam.domain,
            project=iam.project,
            clock=ctx.clock,
            retry_policy=ctx.retry,
            share=ctx.token_share,
        )

    return ctx.shared("iam", make)


# ---- errors and the token rule -----------------------------------------------------------------


def huawei_error(resp: httpx.Response) -> tuple[str, str]:
    """``(error_code, error_msg)`` of an IoTDA/ROMA/APIG error body (empty strings if absent)."""
    try:
        body: Any = resp.json()
    except ValueError:
        return "", short_body(resp.content)
    if not isinstance(body, dict):
        return "", ""
    if isinstance(body.get("error"), dict):  # keystone shape
        err = body["error"]
        return str(err.get("code", "")), str(err.get("message", ""))
    return str(body.get("error_code", "")), str(body.get("error_msg", ""))


def classify_huawei(resp: httpx.Response, call: str) -> ProviderError:
    code, msg = huawei_error(resp)
    text = f"HTTP {resp.status_code} {code} {msg}".strip()
    if code in NOT_FOUND or resp.status_code == 404:
        return ObjectNotFound(text, call=call)
    if code in THROTTLED:
        return TransientError(text, call=call, throttled=True)
    if code in AUTH_CODES or resp.status_code == 401:
        return AuthError(text, call=call)
    return error_for_status(resp.status_code, call, f"{code} {msg}".strip(), resp.headers)


def is_token_rejected(resp: httpx.Response) -> bool:
    """401, or a 403 whose code says the token is not valid (body read)."""
    if resp.status_code == 401:
        return True
    code, _ = huawei_error(resp) if resp.status_code == 403 else ("", "")
    return code in AUTH_CODES


def iam_auth(source: IamTokenSource) -> TokenAuth:
    """``X-Auth-Token`` from IAM, one fresh token after a rejection."""
    return TokenAuth(source, "X-Auth-Token", is_token_rejected)


def rejected_twice(call: str) -> AuthError:
    return AuthError("IAM token rejected even after a fresh one", call=call)


# ---- IAM tokens --------------------------------------------------------------------------------


class IamTokenSource(CachedToken):
    """Caches one project-scoped IAM token; ``token()`` is single-flight."""

    margin = REFRESH_MARGIN

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
        share: TokenShare | None = None,
    ) -> None:
        # the fleet's copy of this user's token (opt-in), named without the password
        name = f"iam:{url}:{domain}:{user}:{project}"
        super().__init__(clock, SharedSlot(share, name, clock) if share is not None else None)
        self._client = client
        self._url = url.rstrip("/") + "/v3/auth/tokens"
        self._user = user
        self._password = password
        self._domain = domain
        self._project = project
        self._retry = retry_policy
        self._project_id: str | None = None
        self.token_requests = 0  # how many times IAM was asked (tests, stats)

    def __repr__(self) -> str:
        return f"IamTokenSource(user={self._user!r}, project={self._project!r})"

    async def _renew(self, held: str | None) -> str:
        return await retry("iam.token", self._fetch, policy=self._retry)

    def _extra(self) -> dict[str, str]:
        return {"project_id": self._project_id or ""}

    def _shared(self, extra: dict[str, str]) -> bool:
        self._project_id = extra.get("project_id") or self._project_id
        return self._project_id is not None  # without it IoTDA/ROMA cannot call

    async def project_id(self) -> str:
        """The id of the scoped project, as IAM reported it with the token."""
        if self._project_id is None:
            await self.token()
        if self._project_id is None:
            raise ProtocolError("IAM token response has no token.project.id", call="iam.token")
        return self._project_id

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
        with map_http_errors(call) as tagged:
            resp = await self._client.post(
                self._url, params={"nocatalog": "true"}, json=body, extensions=tagged
            )
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
            expires = fields.parse_iso(tok.get("expires_at"))
            proj = tok.get("project") or {}
            if isinstance(proj, dict) and isinstance(proj.get("id"), str):
                self._project_id = proj["id"]
        except ValueError:
            log.warning("%s: token body is not JSON; assuming a 24 h token", call)
        life = (expires - now) if expires is not None else 86400.0
        if life <= 0:
            log.warning("%s: token expires_at lies in the past (clock skew?); using 10 min", call)
            life = 600.0
        self._keep(str(token), life)
        record_token(call)
        log.debug("%s: new token, refresh in %.0fs", call, self._refresh_at - now)
        return str(token)
