"""Credentials checks of the four auth schemes, and OBS presigned URLs.

- EnOS: ``apim-accesstoken`` issued by the token service (enos.md §2).
- IAM: ``X-Subject-Token`` from ``POST /v3/auth/tokens``, sent as ``X-Auth-Token`` (huawei.md §1).
- Huawei AK/SK: ``Authorization: SDK-HMAC-SHA256 Access=..., SignedHeaders=..., Signature=...``
  with ``X-Sdk-Date``, as the official Huawei Cloud SDKs sign IoTDA and ROMA requests.
- KooDrive: static bearer token or app auth HMAC-SHA256 (huawei.md §2.2.3).
- OBS: AWS4-style presigned query, signed here with a per-process server secret (huawei.md §2.9).
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import logging
import secrets
import time
from urllib.parse import quote, urlsplit

from starlette.requests import Request

from .state import Token, World

log = logging.getLogger(__name__)

KOODRIVE_AUTH_WINDOW = 15 * 60  # seconds an app-auth X-Date stays valid [C]
KOODRIVE_FUTURE_SKEW = 5  # seconds of clock skew tolerated for X-Date "in the future" [I]


def iso_ms(epoch: float) -> str:
    """``2020-01-04T09:05:22.701000Z`` (IAM keystone style)."""
    whole = int(epoch)
    micro = round((epoch - whole) * 1e6)
    if micro >= 1_000_000:
        whole, micro = whole + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{micro:06d}Z"


# ---- EnOS ---------------------------------------------------------------------------------------


def enos_encryption(app_key: str, timestamp: str, app_secret: str) -> str:
    return hashlib.sha256(f"{app_key}{timestamp}{app_secret}".encode()).hexdigest()


def enos_issue(world: World, app_key: str) -> Token:
    """A new EnOS access token for ``app_key`` with the plan's lifetime."""
    lifetime = int(world.faults.plan.enos_token_lifetime)
    tok = Token(secrets.token_hex(16), world.clock() + lifetime, app_key)
    world.enos_tokens[tok.value] = tok
    world.enos_current[app_key] = tok
    return tok


def enos_token_ok(world: World, request: Request) -> bool:
    value = request.headers.get("apim-accesstoken")
    if not value:
        return False
    tok = world.enos_tokens.get(value)
    return tok is not None and tok.expires > world.clock()


# ---- IAM ----------------------------------------------------------------------------------------


def iam_issue(world: World, user: str) -> Token:
    lifetime = int(world.faults.plan.iam_token_lifetime)
    value = "MII" + secrets.token_urlsafe(96).replace("-", "+").replace("_", "/")
    tok = Token(value, world.clock() + lifetime, user)
    world.iam_tokens[value] = tok
    return tok


def iam_check(world: World, request: Request) -> tuple[Token | None, str]:
    """The token of ``X-Auth-Token``, or ``None`` and the APIG.0301 message."""
    value = request.headers.get("x-auth-token")
    if not value:
        return None, "Incorrect IAM authentication information: x-auth-token not found"
    tok = world.iam_tokens.get(value)
    if tok is None:
        return None, "Incorrect IAM authentication information: decrypt token fail"
    if tok.expires <= world.clock():
        return None, (
            "Incorrect IAM authentication information: token expires, expires_at: "
            + iso_ms(tok.expires)
        )
    return tok, ""


# ---- Huawei AK/SK (SDK-HMAC-SHA256) -------------------------------------------------------------

HUAWEI_SIGN_ALGORITHM = "SDK-HMAC-SHA256"
HUAWEI_SIGN_WINDOW = 15 * 60  # seconds an X-Sdk-Date stays valid, either way [I]
AKSK_FAIL = "Incorrect IAM authentication information: verify aksk signature fail"


def _sdk_encode(text: str) -> str:
    return quote(text, safe="~")


def huawei_canonical_request(
    method: str,
    path: str,
    query: list[tuple[str, str]],
    headers: dict[str, str],
    signed: list[str],
    payload_hash: str,
) -> str:
    """The SDK signer's CanonicalRequest: each path segment URI-encoded with a trailing ``/``;
    the query sorted and encoded; ``name:value`` lines of the signed headers; the payload hash."""
    uri = "/".join(_sdk_encode(seg) for seg in path.split("/"))
    if not uri.endswith("/"):
        uri += "/"
    q = "&".join(f"{_sdk_encode(k)}={_sdk_encode(v)}" for k, v in sorted(query))
    canon_headers = "".join(f"{h}:{headers.get(h, '').strip()}\n" for h in signed)
    return "\n".join([method.upper(), uri, q, canon_headers, ";".join(signed), payload_hash])


def huawei_signature(secret_key: str, sdk_date: str, canonical_request: str) -> str:
    digest = hashlib.sha256(canonical_request.encode()).hexdigest()
    string_to_sign = f"{HUAWEI_SIGN_ALGORITHM}\n{sdk_date}\n{digest}"
    return hmac.new(secret_key.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()


def _auth_fields(params: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in params.split(","):
        k, sep, v = part.strip().partition("=")
        if sep:
            fields[k.strip()] = v.strip()
    return fields


async def _huawei_aksk(world: World, request: Request, params: str) -> Token | None:
    creds = world.credentials.get("iam", {})
    ak, sk = str(creds.get("accessKey") or ""), str(creds.get("secretKey") or "")
    fields = _auth_fields(params)
    if not ak or not sk or not hmac.compare_digest(fields.get("Access", ""), ak):
        log.info("AK/SK: unknown access key")
        return None
    signed = [h.strip().lower() for h in fields.get("SignedHeaders", "").split(";") if h.strip()]
    sdk_date = request.headers.get("x-sdk-date", "")
    when = _parse_x_date(sdk_date)
    if "x-sdk-date" not in signed or when is None:
        log.info("AK/SK: X-Sdk-Date missing or not signed")
        return None
    now = world.clock()
    if abs(now - when) > HUAWEI_SIGN_WINDOW:
        log.info("AK/SK: X-Sdk-Date %s outside the %d s window", sdk_date, HUAWEI_SIGN_WINDOW)
        return None
    # header values travel as UTF-8 bytes; Starlette hands them over decoded as Latin-1
    headers = {
        k.lower(): v.encode("latin-1").decode("utf-8", "replace")
        for k, v in request.headers.items()
    }
    body = await request.body()
    if not body:
        payload = hashlib.sha256(b"").hexdigest()
    else:
        payload = headers.get("x-sdk-content-sha256") or hashlib.sha256(body).hexdigest()
    canon = huawei_canonical_request(
        request.method,
        str(request.scope["path"]),
        list(request.query_params.multi_items()),
        headers,
        signed,
        payload,
    )
    expected = huawei_signature(sk, sdk_date, canon)
    if not hmac.compare_digest(expected, fields.get("Signature", "").lower()):
        log.info("AK/SK: signature mismatch")
        return None
    return Token(ak, when + HUAWEI_SIGN_WINDOW, str(creds.get("user", "")))


async def huawei_check(world: World, request: Request) -> tuple[Token | None, str]:
    """IoTDA/ROMA credentials: an AK/SK-signed request (what the official SDKs send) or an IAM
    token (``X-Auth-Token``, what the daemon sends). ``None`` and the APIG.0301 message when
    neither is good."""
    scheme, _, params = request.headers.get("authorization", "").strip().partition(" ")
    if scheme == HUAWEI_SIGN_ALGORITHM:
        tok = await _huawei_aksk(world, request, params)
        return (tok, "") if tok is not None else (None, AKSK_FAIL)
    return iam_check(world, request)


# ---- KooDrive -----------------------------------------------------------------------------------


def _uri_encode(text: str, safe: str = "") -> str:
    return quote(text, safe="-_.~" + safe)


def koodrive_canonical_request(
    method: str,
    path: str,
    query: list[tuple[str, str]],
    headers: dict[str, str],
    signed: list[str],
    body: bytes,
) -> str:
    uri = _uri_encode(path, "/")
    if not uri.endswith("/"):
        uri += "/"
    q = "&".join(f"{k}={v}" for k, v in sorted((_uri_encode(k), _uri_encode(v)) for k, v in query))
    canon_headers = "".join(f"{h}:{headers.get(h, '').strip()}\n" for h in signed)
    return "\n".join(
        [method.upper(), uri, q, canon_headers, ";".join(signed), hashlib.sha256(body).hexdigest()]
    )


def koodrive_signature(app_secret: str, canonical_request: str) -> str:
    string_to_sign = "HMAC-SHA256\n" + hashlib.sha256(canonical_request.encode()).hexdigest()
    return hmac.new(app_secret.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()


def _parse_x_date(value: str) -> float | None:
    try:
        return float(calendar.timegm(time.strptime(value, "%Y%m%dT%H%M%SZ")))
    except ValueError:
        return None


async def koodrive_auth_ok(world: World, request: Request) -> bool:
    creds = world.credentials.get("koodrive", {})
    auth = request.headers.get("authorization", "").strip()
    if not auth:
        return False
    if auth.startswith("HMAC-SHA256 "):
        return await _koodrive_app_auth(world, request, auth[len("HMAC-SHA256 ") :], creds)
    token = str(creds.get("token", ""))
    bare = token
    for prefix in ("Bearer ", "Bearer+"):
        if bare.startswith(prefix):
            bare = bare[len(prefix) :]
    got = auth
    for prefix in ("Bearer ", "Bearer+"):
        if got.startswith(prefix):
            got = got[len(prefix) :].strip()
    return bool(bare) and hmac.compare_digest(got, bare)


async def _koodrive_app_auth(
    world: World, request: Request, params: str, creds: dict[str, object]
) -> bool:
    fields: dict[str, str] = {}
    for part in params.split(","):
        k, sep, v = part.strip().partition("=")
        if sep:
            fields[k.strip()] = v.strip()
    if fields.get("AppId") != creds.get("appId") or "Signature" not in fields:
        return False
    signed = [h.strip().lower() for h in fields.get("SignedHeaders", "").split(";") if h.strip()]
    if "x-date" not in signed or "x-user-id" not in signed:
        return False
    user = request.headers.get("x-user-id", "")
    if not user or (creds.get("userId") and user != str(creds.get("userId"))):
        return False
    when = _parse_x_date(request.headers.get("x-date", ""))
    now = world.clock()
    if when is None or when > now + KOODRIVE_FUTURE_SKEW or now - when > KOODRIVE_AUTH_WINDOW:
        return False
    headers = {k.lower(): v for k, v in request.headers.items()}
    body = await request.body()
    query = [(k, v) for k, v in request.query_params.multi_items()]
    canon = koodrive_canonical_request(
        request.method, request.url.path, query, headers, signed, body
    )
    expected = koodrive_signature(str(creds.get("appSecret", "")), canon)
    return hmac.compare_digest(expected, fields["Signature"].lower())


# ---- OBS presigned URLs -----------------------------------------------------------------------

OBS_BUCKET = "koodrive-emu"
OBS_ACCESS_KEY = "EMULATORAK0000000000"
OBS_REGION = "emu-region-1"


def obs_string_to_sign(path: str, params: list[tuple[str, str]]) -> str:
    items = sorted((k, v) for k, v in params if k != "X-Amz-Signature")
    return path + "\n" + "&".join(f"{_uri_encode(k)}={_uri_encode(v)}" for k, v in items)


def obs_sign(secret: bytes, path: str, params: list[tuple[str, str]]) -> str:
    return hmac.new(secret, obs_string_to_sign(path, params).encode(), hashlib.sha256).hexdigest()


def obs_presign(world: World, base_url: str, object_key: str, disposition: str) -> str:
    return presign_url(world, base_url, f"/obs/{OBS_BUCKET}/{object_key}", disposition)


def presign_url(world: World, base_url: str, path: str, disposition: str) -> str:
    """``base_url`` + ``path`` + a presigned query (X-Amz-*, signed over the full URL path).

    ``base_url`` may carry a path of its own (an external static server's prefix): the signature
    covers the path the client will send.
    """
    now = world.clock()
    amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    day = amz_date[:8]
    base = base_url.rstrip("/")
    full_path = urlsplit(base).path + path
    params = [
        ("response-content-disposition", disposition),
        ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
        ("X-Amz-Date", amz_date),
        ("X-Amz-SignedHeaders", "host"),
        ("X-Amz-Expires", str(int(world.faults.plan.presign_expires))),
        ("X-Amz-Credential", f"{OBS_ACCESS_KEY}/{day}/{OBS_REGION}/s3/aws4_request"),
    ]
    signature = obs_sign(world.secret, full_path, params)
    world.presigned.append(signature)
    params.append(("X-Amz-Signature", signature))
    query = "&".join(f"{_uri_encode(k)}={_uri_encode(v)}" for k, v in params)
    return base + path + "?" + query


def obs_verify(world: World, request: Request) -> str | None:
    """``None`` when the presigned query is good, else ``"signature"`` or ``"expired"``."""
    params = list(request.query_params.multi_items())
    got = request.query_params.get("X-Amz-Signature", "")
    want = obs_sign(world.secret, request.url.path, params)
    if not got or not hmac.compare_digest(got, want):
        return "signature"
    when = _parse_x_date(request.query_params.get("X-Amz-Date", ""))
    try:
        expires = int(request.query_params.get("X-Amz-Expires", ""))
    except ValueError:
        return "signature"
    if when is None or world.clock() > when + expires:
        return "expired"
    return None
