"""HTTP plumbing shared by all families: route instrumentation (stats + faults), streaming bodies
with Range support, and the per-family error bodies used for injected faults."""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from .faults import Rule, patch_json
from .state import RouteStats, World

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]


class ConnectionAborted(Exception):
    """Raised inside the app to make the server drop the connection mid-body (fault ``reset``)."""


class Json(JSONResponse):
    """Compact UTF-8 JSON; lone surrogates (legal in JSON strings) are written as ``\\uXXXX``."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode()


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Json(obj, status_code=status, headers=headers)


def xml_response(status: int, code: str, message: str, extra: str = "") -> Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>{extra}"
        "<RequestId>0000018B3C8F1A2B</RequestId><HostId>emu</HostId></Error>"
    )
    return Response(body, status_code=status, media_type="application/xml")


# ---- streaming bodies ----------------------------------------------------------------------------


class Stream(Response):
    """A body streamed from a (sync) chunk iterator in the event loop, with an exact length.

    Chunks come from page-cache reads or generated content (cheap), so no thread hop per chunk;
    a disconnect of the client stops the iteration.
    """

    def __init__(
        self,
        chunks: Iterator[bytes],
        length: int,
        status_code: int = 200,
        headers: dict[str, str] | None = None,
        media_type: str = "application/octet-stream",
    ) -> None:
        self.chunks = chunks
        self.status_code = status_code
        self.media_type = media_type
        self.background = None
        hdrs = dict(headers or {})
        hdrs["content-length"] = str(length)
        hdrs.setdefault("content-type", media_type)
        self.init_headers(hdrs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        if scope.get("method") == "HEAD":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return

        try:
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    while True:
                        msg = await receive()
                        if msg["type"] == "http.disconnect":
                            tg.cancel_scope.cancel()
                            return

                tg.start_soon(watch)
                for chunk in self.chunks:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # surface a lone error (e.g. an injected reset)
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise


_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)

UNSATISFIABLE = (-1, -1)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Parse a single ``Range: bytes=...`` header.

    Returns ``(first, last)`` inclusive, :data:`UNSATISFIABLE` when well-formed but not
    satisfiable, or ``None`` when absent, malformed or multi-range (= serve the whole object).
    """
    if header is None:
        return None
    m = _RANGE.match(header)
    if m is None:
        return None
    a, b = m.group(1), m.group(2)
    if a == "" and b == "":
        return None
    if a == "":
        n = int(b)
        if n == 0 or size == 0:
            return UNSATISFIABLE
        return (max(0, size - n), size - 1)
    first = int(a)
    last = int(b) if b != "" else size - 1
    if b != "" and last < first:
        return None  # syntactically invalid: ignored (RFC 9110)
    if first >= size:
        return UNSATISFIABLE
    return (first, min(last, size - 1))


# ---- instrumentation --------------------------------------------------------------------------

_FAULT_TEXT = {
    429: "API rate limit exceeded",
    500: "An unexpected error occurred",
    502: "Bad Gateway",
    503: "Service unavailable",
    504: "Gateway Timeout",
}


# Huawei's gateway puts an ``X-Request-Id`` on every IoTDA and ROMA answer (the official SDKs read
# it into their exceptions); ROMA error bodies repeat it as ``request_id``.
REQUEST_ID_FAMILIES = frozenset({"iotda", "roma"})
_request_id: ContextVar[str | None] = ContextVar("emulator_request_id", default=None)


def request_id() -> str:
    """The ``X-Request-Id`` of the answer being built (a fresh id outside such a request)."""
    rid = _request_id.get()
    return rid if rid is not None else secrets.token_hex(16)


def fault_response(route: str, status: int, retry_after: int | None) -> Response:
    """The body an injected error/throttle gets, in the shape of the route's API family.

    IoTDA signals throttling with HTTP 403 ``IOTDA.021101`` (not 429): a 429 decision on an
    ``iotda.*`` route is answered that way, without ``Retry-After``.
    """
    text = _FAULT_TEXT.get(status, "An unexpected error occurred")
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    family = route.split(".", 1)[0]
    resp: Response
    if route == "koodrive.obs":
        code = "SlowDown" if status == 429 else "ServiceUnavailable"
        resp = xml_response(
            status,
            code,
            "Please reduce your request rate."
            if status == 429
            else "Service is unable to handle request.",
        )
    elif family == "enos":
        resp = json_response({"message": text}, status)
    elif family == "iam":
        resp = json_response({"error": {"code": status, "message": text, "title": text}}, status)
    elif family == "koodrive":
        resp = json_response({"code": status, "msg": text}, status)
    elif family == "iotda":
        if status == 429:
            body = {
                "error_code": "IOTDA.021101",
                "error_msg": "Request reached the maximum rate limit.",
            }
            status, headers = 403, None
        else:
            body = {"error_code": "IOTDA.000500", "error_msg": "Internal server error."}
        resp = json_response(body, status)
    else:
        code = "APIG.0308" if status == 429 else "ROMA.00000500"
        resp = json_response(
            {
                "error_code": code,
                "error_msg": text,
                "error_details": text,
                "request_id": request_id(),
            },
            status,
        )
    if headers:
        resp.headers.update(headers)
    return resp


class Instrumented(Response):
    """Wraps a response: counts status and body bytes, applies reset/truncate faults."""

    def __init__(
        self,
        inner: Response,
        stats: RouteStats,
        reset_after: int | None,
        truncate_after: int | None,
        reshape: tuple[Rule, ...] = (),
    ) -> None:
        self.inner = inner
        self.reshape = reshape
        self.status_code = inner.status_code
        self.stats = stats
        self.reset_after = reset_after
        self.truncate_after = truncate_after
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stats = self.stats
        limit = self.reset_after if self.reset_after is not None else self.truncate_after
        sent = 0
        done = False

        async def wrapped(message: Message) -> None:
            nonlocal sent, done
            if message["type"] == "http.response.start":
                key = str(message["status"])
                stats.statuses[key] = stats.statuses.get(key, 0) + 1
                await send(message)
                return
            if message["type"] != "http.response.body" or done:
                return
            body: bytes = message.get("body", b"")
            if (
                limit is not None
                and sent + len(body) >= limit
                and (message.get("more_body", False) or sent + len(body) > limit)
            ):
                part = body[: max(0, limit - sent)]
                sent += len(part)
                stats.bytes += len(part)
                done = True
                if part:
                    await send({"type": "http.response.body", "body": part, "more_body": True})
                if self.reset_after is not None:
                    log.info("fault: resetting connection after %d bytes", sent)
                    raise ConnectionAborted(f"injected reset after {sent} bytes")
                log.info("fault: truncating body after %d bytes", sent)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            sent += len(body)
            stats.bytes += len(body)
            await send(message)

        inner_send = reshaped(wrapped, self.reshape) if self.reshape else wrapped
        try:
            await self.inner(scope, receive, inner_send)
        except ConnectionAborted:
            raise
        except RuntimeError as exc:  # server refuses a short body: the connection is closed
            if not done and not self.reshape:
                raise
            log.debug("truncated response closed by the server: %s", exc)
        finally:
            stats.leave()


_CONTENT_RANGE = re.compile(rb"^\s*bytes\s+(\d+)-(\d+)/(\S+)\s*$", re.IGNORECASE)


def reshaped(send: Send, rules: tuple[Rule, ...]) -> Send:
    """A ``send`` that applies ``resize`` / ``headers`` rules to the answer going through it.

    The declared ``Content-Length`` and the bytes sent always agree (the lie is about the
    object, not the HTTP framing): ``resize`` changes both, a ``Content-Length`` set by
    ``headers`` cuts the body to it; a body shorter than a declared length closes early.
    """
    delta = sum(r.delta for r in rules if r.kind == "resize")
    fill = next((r.fill for r in rules if r.kind == "resize" and r.delta > 0), "X").encode()
    extra = {
        k.lower(): v for r in rules if r.kind == "headers" for k, v in (r.headers or {}).items()
    }
    limit: int | None = None
    sent = 0
    done = False

    async def out(message: Message) -> None:
        nonlocal limit, sent, done
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", [])]
            length = next((int(v) for k, v in headers if k.lower() == b"content-length"), None)
            if length is not None and delta:
                limit = max(0, length + delta)
                headers = [
                    (k, str(limit).encode()) if k.lower() == b"content-length" else (k, v)
                    for k, v in headers
                ]
                for i, (k, v) in enumerate(headers):
                    m = _CONTENT_RANGE.match(v) if k.lower() == b"content-range" else None
                    if m is not None:
                        first = int(m.group(1))
                        end = first + limit - 1
                        headers[i] = (k, b"bytes %d-%d/%s" % (first, end, m.group(3)))
            if "content-length" in extra:
                try:
                    limit = max(0, int(extra["content-length"]))
                except ValueError:
                    limit = None  # a non-numeric length is sent as is; the body unchanged
            names = {k.encode() for k in extra}
            headers = [(k, v) for k, v in headers if k.lower() not in names]
            headers += [(k.encode(), v.encode("latin-1", "replace")) for k, v in extra.items()]
            await send({**message, "headers": headers})
            return
        if message["type"] != "http.response.body" or done:
            return
        body: bytes = message.get("body", b"")
        more = bool(message.get("more_body", False))
        if limit is not None:
            body = body[: max(0, limit - sent)]
        sent += len(body)
        if limit is not None and sent >= limit:
            if delta > 0 and not more:
                pass  # the real body ended: the fill below makes up the rest
            else:
                more = False
        if not more:
            if limit is not None and sent < limit and delta > 0:
                pad = limit - sent
                body += (fill * (pad // len(fill) + 1))[:pad]
                sent = limit
            done = True
        await send({"type": "http.response.body", "body": body, "more_body": more})

    return out


def _patched(resp: JSONResponse, rules: tuple[Rule, ...], seq: Callable[[], str]) -> Response:
    """The JSON answer with the ``patch`` rules applied (fault kind ``patch``)."""
    content = json.loads(bytes(resp.body))
    for rule in rules:
        n = patch_json(content, rule, seq)
        log.info("fault: patched %d object(s) of the answer", n)
    out = json_response(content, resp.status_code)
    for k, v in resp.headers.items():
        if k.lower() not in ("content-length", "content-type"):
            out.headers[k] = v
    return out


def endpoint(world: World, name: str | Callable[[Request], str], handler: Handler) -> Handler:
    """Wrap a handler with stats and the fault plan, under a stable route name."""

    async def run(request: Request) -> Response:
        route = name if isinstance(name, str) else name(request)
        stats = world.route_stats(route)
        stats.requests += 1
        stats.enter()  # left when the answer's last byte is sent (Instrumented)
        rid = secrets.token_hex(16) if route.split(".", 1)[0] in REQUEST_ID_FAMILIES else None
        reset = _request_id.set(rid)
        try:
            decision = world.faults.decide(route)
            if decision.latency > 0:
                await anyio.sleep(decision.latency)
            if decision.body is not None:
                rule = decision.body
                resp = Response(rule.text, status_code=rule.status, media_type=rule.content_type)
            elif decision.status is not None:
                resp = fault_response(route, decision.status, decision.retry_after)
            else:
                resp = await handler(request)
                if world.faults.plan.record_answers > 0 and isinstance(resp, JSONResponse):
                    world.faults.record(
                        route,
                        request.url.path + (f"?{request.url.query}" if request.url.query else ""),
                        resp.status_code,
                        json.loads(bytes(resp.body)),
                    )
                if decision.patches and isinstance(resp, JSONResponse):
                    resp = _patched(resp, decision.patches, world.faults.next_seq)
        except BaseException:
            stats.leave()
            raise
        finally:
            _request_id.reset(reset)
        if rid is not None:
            resp.headers["X-Request-Id"] = rid
        return Instrumented(
            resp, stats, decision.reset_after, decision.truncate_after, decision.reshape
        )

    return run


async def read_json(request: Request) -> Any:
    """The JSON body, or ``None`` when empty; raises ``ValueError`` when malformed."""
    raw = await request.body()
    if not raw.strip():
        return None
    return json.loads(raw)
