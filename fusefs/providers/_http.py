"""The HTTP layer shared by every provider: error mapping, retries, resumable ranged streams.

One place converts lower-layer failures into the :mod:`fusefs.providers.base` error tree (in the
style of httpx's ``map_httpcore_exceptions``)::

    httpx.ConnectError                    -> Unavailable        (connection refused, DNS)
    httpx.TimeoutException                -> TransientError
    other httpx.TransportError            -> TransientError     (reset, cut mid-body, ...)
    HTTP 5xx / 408 / 429                  -> TransientError     (retry_after from Retry-After)
    HTTP 404                              -> ObjectNotFound
    HTTP 401 / 403                        -> AuthError          (unless the provider knows better)
    any other non-2xx                     -> ProtocolError

Providers classify their own error bodies first (``classify`` hooks) and fall back on
:func:`error_for_status`. Nothing here has an overall timeout: the caller's trio cancel scope bounds
every wait, including retries.

Metrics (:mod:`fusefs.metrics`) are recorded in this module, from the call names the providers
already give (``"koodrive.listFiles"``: provider ``koodrive``, call ``listFiles``): answers and
failures where a request is answered or fails (httpx: the client's hooks, see :func:`meter`, and
:func:`map_http_errors`; object bodies: :func:`download_range`), retries and throttle waits in the
retry loops (:func:`record_retry`), bytes where they are received.
"""

from __future__ import annotations

import email.utils
import http.client
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import trio

from fusefs import metrics
from fusefs.logs import excerpt
from fusefs.providers._bulk import (
    MAX_JSON_BODY,
    Answer,
    Attempt,
    BulkClient,
    Stopped,
    content_range,
)
from fusefs.providers.base import (
    AuthError,
    ObjectNotFound,
    ProtocolError,
    ProviderError,
    RangeSink,
    TransientError,
    Unavailable,
    VersionMismatch,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

CHUNK_SIZE = 1 << 20
#: Headers for downloads: raw bytes, no content coding (Range and sizes refer to the stored bytes).
DOWNLOAD_HEADERS = {"Accept-Encoding": "identity"}


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter: ``base_delay * 2**n`` capped at ``max_delay``."""

    attempts: int = 6
    base_delay: float = 0.1
    max_delay: float = 5.0
    unavailable_attempts: int = 3  # connection refused: give up sooner

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        backoff = min(self.max_delay, self.base_delay * (2.0 ** max(0, failures - 1)))
        jittered = backoff * (0.5 + random.random() / 2)
        if retry_after is not None:
            return max(retry_after, jittered)
        return jittered


DEFAULT_RETRY = RetryPolicy()


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date); ``None`` if absent/invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


# ------------------------------------------------------------------------------------------------
# Metrics: the one place the providers record them


def split_call(call: str) -> tuple[str, str]:
    """``"enos.token.get"`` → ``("enos", "token.get")``: the labels of a call's metrics."""
    provider, dot, name = call.partition(".")
    return (provider, name) if dot else ("", call)


_TAG = "fusefs.call"


class _Call:
    """An httpx request's call (in its ``extensions``): the client's hooks count its requests
    sent and not answered yet, so that a failure without an answer is counted once."""

    __slots__ = ("call", "unanswered")

    def __init__(self, call: str) -> None:
        self.call = call
        self.unanswered = 0

    def failed(self, kind: str) -> None:
        if self.unanswered > 0:  # sent, no answer (a failure after the answer is no new request)
            self.unanswered = 0
            record_request(self.call, kind)


async def _on_request(request: httpx.Request) -> None:
    tag = request.extensions.get(_TAG)
    if isinstance(tag, _Call):
        tag.unanswered += 1


async def _on_response(response: httpx.Response) -> None:
    tag = response.request.extensions.get(_TAG)
    if isinstance(tag, _Call):
        tag.unanswered -= 1
        record_request(tag.call, response.status_code)


def meter(client: httpx.AsyncClient) -> None:
    """Count every answer ``client`` gets for a request made inside :func:`map_http_errors`
    (each one: a rejected token and the try with a fresh one are two). Idempotent."""
    hooks = client.event_hooks
    if _on_response not in hooks.get("response", []):
        client.event_hooks = {
            "request": [*hooks.get("request", []), _on_request],
            "response": [*hooks.get("response", []), _on_response],
        }


def call_of(request: httpx.Request) -> str | None:
    """The call ``request`` was made for (None: made outside :func:`map_http_errors`)."""
    tag = request.extensions.get(_TAG)
    return tag.call if isinstance(tag, _Call) else None


def record_request(call: str, status: int | str) -> None:
    """``call`` was answered with HTTP ``status``, or failed without an answer (an error kind)."""
    provider, name = split_call(call)
    metrics.request(provider, name, status)


def record_retry(call: str, exc: TransientError | None = None, delay: float = 0.0) -> None:
    """``call`` is tried again, after ``delay`` seconds: a rate-limit wait if ``exc`` is a
    throttle (429 and the like)."""
    provider, name = split_call(call)
    metrics.retry(provider, name)
    if exc is not None and exc.throttled:
        metrics.rate_limit_wait(provider, delay)


def record_token(call: str) -> None:
    """A token source got a new token with ``call``."""
    metrics.token_refresh(split_call(call)[0])


def _bulk_error_kind(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError | socket.gaierror | ssl.SSLError):
        return "connect"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "reset"


@contextmanager
def map_http_errors(call: str) -> Iterator[dict[str, Any]]:
    """Convert httpx transport exceptions raised inside the block into ``ProviderError``.

    Yields the ``extensions`` for the httpx request made inside: tagged so, its answers are
    counted by the client's hooks (:func:`meter`) and a failure without one here, by kind
    (``connect``, ``timeout``, ``reset``, ``bad_url``)."""
    tag = _Call(call)
    try:
        yield {_TAG: tag}
    except httpx.ConnectError as exc:
        tag.failed("connect")
        raise Unavailable(f"cannot connect: {exc or type(exc).__name__}", call=call) from exc
    except httpx.TimeoutException as exc:
        tag.failed("timeout")
        raise TransientError(f"timed out ({type(exc).__name__})", call=call) from exc
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        tag.failed("bad_url")
        raise ProtocolError(f"bad URL: {exc}", call=call) from exc
    except httpx.TransportError as exc:
        tag.failed("reset")
        raise TransientError(f"{type(exc).__name__}: {exc}", call=call) from exc
    except httpx.StreamError as exc:  # pragma: no cover - programming errors, kept visible
        raise ProtocolError(f"{type(exc).__name__}: {exc}", call=call) from exc


def error_for_status(
    status: int, call: str, detail: str = "", headers: Mapping[str, str] | None = None
) -> ProviderError:
    """The default classification of a non-2xx status (see the module docstring)."""
    msg = f"HTTP {status}" + (f": {detail}" if detail else "")
    if status >= 500 or status in (408, 429):
        retry_after = parse_retry_after((headers or {}).get("retry-after"))
        return TransientError(msg, call=call, retry_after=retry_after, throttled=status == 429)
    if status == 404:
        return ObjectNotFound(msg, call=call)
    if status in (401, 403):
        return AuthError(msg, call=call)
    return ProtocolError(msg, call=call)


def short_body(content: bytes, limit: int = 300) -> str:
    """A loggable excerpt of an error body (never a request: bodies we send may hold secrets):
    one line, control characters escaped, at most ``limit`` characters (fusefs.logs)."""
    return excerpt(content, limit)


def is_json(response: httpx.Response) -> bool:
    return "json" in response.headers.get("content-type", "").lower()


async def retry(
    call: str,
    fn: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy = DEFAULT_RETRY,
) -> T:
    """Run the idempotent ``fn`` again after a ``TransientError``, with backoff and jitter.

    ``Unavailable`` gets fewer attempts. Other ``ProviderError``s propagate at once. There is no
    overall deadline: the caller's cancel scope bounds the loop.
    """
    failures = 0
    while True:
        try:
            return await fn()
        except TransientError as exc:
            failures += 1
            limit = policy.unavailable_attempts if isinstance(exc, Unavailable) else policy.attempts
            if failures >= limit:
                raise
            delay = policy.delay(failures, exc.retry_after)
            log.warning(
                "%s failed (%s); retry %d/%d in %.2fs", call, exc, failures, limit - 1, delay
            )
            record_retry(call, exc, delay)
            await trio.sleep(delay)


# ------------------------------------------------------------------------------------------------
# Resumable ranged streams (EnOS downloads, KooDrive presigned URLs)


@dataclass(frozen=True, slots=True)
class Target:
    """Where to GET the object now: a URL and the headers (credentials) for it."""

    url: str
    headers: Mapping[str, str]
    params: Mapping[str, str] | None = None


#: ``get_target(stale)``: ``stale=True`` means the previous target was rejected (401/403: expired
#: token or presigned link) and a fresh one is needed.
GetTarget = Callable[[bool], Awaitable[Target]]
#: ``classify(response)`` (body already read): a ProviderError for a non-success response, or
#: ``None`` to use :func:`error_for_status`.
Classify = Callable[[httpx.Response, str], ProviderError | None]


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def start_download(
    stack: AsyncExitStack,
    client: httpx.AsyncClient,
    url: str,
    headers: Mapping[str, str],
    call: str,
    *,
    auth: httpx.Auth | None = None,
) -> httpx.Response:
    """GET ``url`` as a stream: a 200 stays open in ``stack`` for the caller to read; any other
    answer is read whole and closed, for the caller to classify. Network errors are mapped;
    ``auth`` (a ``TokenAuth``) sets the credentials and renews them once if rejected."""
    log.debug("%s: GET %s", call, url)
    with map_http_errors(call) as tagged:
        resp = await stack.enter_async_context(
            client.stream(
                "GET",
                url,
                headers={**headers, **DOWNLOAD_HEADERS},
                auth=auth if auth is not None else httpx.USE_CLIENT_DEFAULT,
                extensions=tagged,
            )
        )
        if resp.status_code != 200:
            await resp.aread()
            await resp.aclose()
    return resp


async def iter_body(resp: httpx.Response, call: str) -> AsyncGenerator[bytes, None]:
    """The body of a whole-object download (:func:`start_download`'s 200) in chunks, counted;
    a cut raises ``TransientError``."""
    provider = split_call(call)[0]
    with map_http_errors(call):
        async for chunk in resp.aiter_bytes(CHUNK_SIZE):
            metrics.downloaded(provider, len(chunk))
            yield chunk


class _Stale(Exception):
    """The target's credentials were rejected (or it moved); get a fresh target."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


# a server that answers ranges in parts: this many parts per download, then an error (not one
# request per byte)
MAX_SHORT_ANSWERS = 16


@dataclass(slots=True)
class _Resume:
    """One resumable download's progress: the byte reached and the failures in a row."""

    call: str
    pos: int
    end: int | None  # exclusive; None: to the end of the object
    expected_size: int | None
    policy: RetryPolicy
    failures: int = 0  # attempts in a row without progress
    stale_in_a_row: int = 0  # rejected targets in a row
    stale: bool = False  # the last target was rejected: ask for a fresh one
    short_answers: int = 0  # whole answers shorter than asked (resumed at once, MAX_SHORT_ANSWERS)

    def progressed(self, n: int) -> None:
        self.pos += n
        self.failures = 0
        self.stale_in_a_row = 0

    def check_size(self, total: int | None) -> None:
        """The size the server reports is the listed size, or the object changed."""
        if self.expected_size is not None and total is not None and total != self.expected_size:
            raise VersionMismatch(
                f"object is now {total} bytes, was listed with {self.expected_size}",
                call=self.call,
            )

    async def failed(self, exc: Exception, progressed: bool) -> None:
        """After a failed attempt: refresh the target, or back off, or raise the final error."""
        if isinstance(exc, _Stale):
            self.stale_in_a_row += 1
            _refresh_or_raise(exc, self.stale_in_a_row, self.call, self.pos)
            record_retry(self.call)
            self.stale = True
            return
        assert isinstance(exc, TransientError)
        if not progressed:
            self.failures += 1
        await _backoff(exc, self.call, self.pos, self.failures, self.policy)


def _range_headers(target: Target, pos: int, end: int | None) -> dict[str, str]:
    headers = {**target.headers, **DOWNLOAD_HEADERS}
    headers["Range"] = f"bytes={pos}-" if end is None else f"bytes={pos}-{end - 1}"
    return headers


async def _range_start(
    resp: httpx.Response,
    r: _Resume,
    is_stale: Callable[[httpx.Response], bool],
    classify: Classify | None,
) -> tuple[int | None, int] | None:
    """Check the head of an answer: ``(total size if known, bytes to skip)``, ``None`` when
    nothing is left to read; a rejected target raises ``_Stale``, other errors their class."""
    if resp.status_code == 206:
        cr = content_range(resp.headers.get("content-range"))
        if cr is None or cr[0] != r.pos:
            raise ProtocolError(
                f"206 with Content-Range {resp.headers.get('content-range')!r} "
                f"for a request from byte {r.pos}",
                call=r.call,
            )
        return cr[2], 0
    if resp.status_code == 200:
        cl = resp.headers.get("content-length")
        if r.pos:
            log.debug("%s: server ignored Range; skipping %d bytes", r.call, r.pos)
        return (int(cl) if cl and cl.isascii() and cl.isdigit() else None), r.pos
    if resp.status_code == 416 and r.end is None and r.pos > 0:
        return None  # asked from the very end of an object of unknown size: nothing left
    await resp.aread()
    if is_stale(resp):
        raise _Stale(resp.status_code)
    err = classify(resp, r.call) if classify else None
    raise err or error_for_status(resp.status_code, r.call, short_body(resp.content), resp.headers)


async def _range_body(
    resp: httpx.Response,
    r: _Resume,
    is_stale: Callable[[httpx.Response], bool],
    json_error: Callable[[bytes], ProviderError | None] | None,
) -> AsyncIterator[bytes]:
    """The body's chunks as they come off the socket (no re-chunking copy in httpx); a JSON
    answer where bytes were expected is an API error envelope served with 200 (EnOS) first."""
    if json_error is None or not is_json(resp):
        return resp.aiter_bytes()
    await resp.aread()
    if is_stale(resp):  # the envelope says the credentials were rejected
        raise _Stale(resp.status_code)
    err = json_error(resp.content)
    if err is not None:
        raise err
    return _one(resp.content)


def _range_ended(r: _Resume, total: int | None, skip: int) -> None:
    """The body ended before the range did: resume (TransientError) unless the object is
    shorter than what was asked (ProtocolError)."""
    if r.end is None:
        if total is not None and r.pos < total:
            raise TransientError(f"body ended at byte {r.pos} of {total}", call=r.call)
        return
    if not skip and r.pos >= r.end:
        return
    if total is not None and total <= r.pos:
        raise ProtocolError(
            f"object ends at byte {total}, before the requested end {r.end}", call=r.call
        )
    raise TransientError(f"body ended at byte {r.pos}, wanted {r.end}", call=r.call)


async def stream_range(
    client: httpx.AsyncClient,
    call: str,
    get_target: GetTarget,
    offset: int,
    length: int | None,
    *,
    expected_size: int | None = None,
    classify: Classify | None = None,
    is_stale: Callable[[httpx.Response], bool] | None = None,
    json_error: Callable[[bytes], ProviderError | None] | None = None,
    policy: RetryPolicy = DEFAULT_RETRY,
    chunk_size: int = CHUNK_SIZE,
) -> AsyncIterator[bytes]:
    """Yield bytes ``[offset, offset+length)`` contiguously, resuming after cuts and expiries.

    Each attempt sends ``Range: bytes=<reached>-<end>``. A 206 is used as is; a 200 (the server
    ignored the Range) is skipped forward to the byte reached. A cut, timeout, 5xx or 429 resumes
    from the byte reached (``policy.attempts`` consecutive failures without progress at most); a
    rejected target (``is_stale``, default 401/403) asks ``get_target(True)`` for a fresh one (twice
    in a row at most). ``expected_size`` (the listed size) is checked against the size the server
    reports: a difference raises ``VersionMismatch``.
    """
    if offset < 0 or (length is not None and length < 0):
        raise ValueError(f"bad range offset={offset} length={length}")
    end = None if length is None else offset + length  # exclusive
    if expected_size is not None:
        end = expected_size if end is None else min(end, expected_size)
    r = _Resume(call, offset, end, expected_size, policy)
    stale_check = is_stale or (lambda resp: resp.status_code in (401, 403))
    provider = split_call(call)[0]
    while r.end is None or r.pos < r.end:
        target = await get_target(r.stale)
        r.stale = False
        headers = _range_headers(target, r.pos, r.end)
        start = r.pos
        try:
            with map_http_errors(call) as tagged:
                async with client.stream(
                    "GET", target.url, params=target.params, headers=headers, extensions=tagged
                ) as resp:
                    log.debug("%s: GET %s -> %d", call, headers["Range"], resp.status_code)
                    head = await _range_start(resp, r, stale_check, classify)
                    if head is None:
                        return
                    total, skip = head
                    r.check_size(total)
                    async for chunk in await _range_body(resp, r, stale_check, json_error):
                        if skip:
                            if len(chunk) <= skip:
                                skip -= len(chunk)
                                continue
                            chunk = chunk[skip:]
                            skip = 0
                        if r.end is not None and r.pos + len(chunk) > r.end:
                            chunk = chunk[: r.end - r.pos]
                        if not chunk:
                            continue
                        r.progressed(len(chunk))
                        metrics.downloaded(provider, len(chunk))
                        yield chunk
                        if r.end is not None and r.pos >= r.end:
                            return
                    _range_ended(r, total, skip)
                    return
        except (_Stale, TransientError) as exc:
            await r.failed(exc, r.pos > start)


async def download_range(
    bulk: BulkClient,
    call: str,
    get_target: GetTarget,
    offset: int,
    length: int,
    sink: RangeSink,
    *,
    expected_size: int | None = None,
    classify: Classify | None = None,
    is_stale: Callable[[httpx.Response], bool] | None = None,
    json_error: Callable[[bytes], ProviderError | None] | None = None,
    policy: RetryPolicy = DEFAULT_RETRY,
) -> None:
    """Receive bytes ``[offset, offset+length)`` into ``sink``, as :func:`stream_range` yields
    them: the same resume, link refresh, size check and error classification, but the body is
    received by ``bulk`` in a worker thread, straight into the sink's buffers."""
    if offset < 0 or length < 0:
        raise ValueError(f"bad range offset={offset} length={length}")
    end = offset + length
    if expected_size is not None:
        end = min(end, expected_size)
    r = _Resume(call, offset, end, expected_size, policy)
    stale_check = is_stale or (lambda resp: resp.status_code in (401, 403))
    provider = split_call(call)[0]
    while r.pos < end:
        target = await get_target(r.stale)
        r.stale = False
        attempt = Attempt(provider)  # the thread counts the bytes it receives
        start = r.pos
        try:
            try:
                answer = await trio.to_thread.run_sync(
                    bulk.get_into,
                    target.url,
                    target.params,
                    dict(target.headers),
                    r.pos,
                    end,
                    sink,
                    attempt,
                    json_error is not None,
                    expected_size,
                    abandon_on_cancel=True,
                )
            except BaseException:
                attempt.stop()  # cancelled: the thread stops at its next receive
                raise
            finally:
                if attempt.status is not None:  # the answer's head came (maybe not all its body)
                    record_request(call, attempt.status)
            log.debug("%s: GET bytes=%d-%d -> %d", call, r.pos, end - 1, answer.status)
            if answer.bad_range:
                raise ProtocolError(
                    f"206 with Content-Range {answer.headers.get('content-range')!r} "
                    f"for a request from byte {r.pos}",
                    call=call,
                )
            if answer.received:
                r.progressed(answer.received)
            if answer.status in (200, 206) and not answer.body:
                if answer.status == 206:
                    cr = content_range(answer.headers.get("content-range"))
                    total = cr[2] if cr is not None else None
                else:
                    cl = answer.headers.get("content-length", "")
                    total = int(cl) if cl.isascii() and cl.isdigit() else None
                r.check_size(total)
                if r.pos >= end:
                    return
                if total is not None and total <= r.pos:
                    raise ProtocolError(
                        f"object ends at byte {total}, before the requested end {end}", call=call
                    )
                if answer.ended_short:  # a whole answer, but less than asked (RFC 9110 allows)
                    r.short_answers += 1
                    if answer.received and r.short_answers <= MAX_SHORT_ANSWERS:
                        continue  # the rest at once: a server that sends ranges in parts
                    if answer.received:
                        raise ProtocolError(
                            f"the server answered less than asked {r.short_answers} times "
                            f"(at byte {r.pos} of {end})",
                            call=call,
                        )
                    raise ProtocolError(  # nothing: asking again gets nothing again
                        f"the server answered nothing of bytes {r.pos}-{end - 1}", call=call
                    )
                raise TransientError(f"body ended at byte {r.pos}, wanted {end}", call=call)
            resp = httpx.Response(answer.status, headers=answer.headers, content=answer.body)
            if answer.status in (200, 206):  # a JSON answer: an error envelope, or JSON bytes
                if stale_check(resp):  # the envelope says the credentials were rejected
                    raise _Stale(answer.status)
                err = json_error(answer.body) if json_error is not None else None
                if err is not None:
                    raise err
                if answer.status == 206:
                    cr = content_range(answer.headers.get("content-range"))
                    if cr is None or cr[0] != r.pos:
                        raise ProtocolError(
                            f"206 with Content-Range {answer.headers.get('content-range')!r} "
                            f"for a request from byte {r.pos}",
                            call=call,
                        )
                    data = memoryview(answer.body)
                else:
                    data = memoryview(answer.body)[r.pos :]
                data = data[: end - r.pos]
                if len(answer.body) >= MAX_JSON_BODY:
                    raise ProtocolError("JSON body too large to check", call=call)
                while data:
                    view = sink.buffer(r.pos)
                    n = min(len(view), len(data))
                    view[:n] = data[:n]
                    await trio.to_thread.run_sync(sink.received, r.pos, n)
                    metrics.downloaded(provider, n)
                    r.pos += n
                    data = data[n:]
                if r.pos < end:
                    raise TransientError(f"body ended at byte {r.pos}, wanted {end}", call=call)
                return
            if stale_check(resp):
                raise _Stale(answer.status)
            err = classify(resp, call) if classify else None
            raise err or error_for_status(
                answer.status, call, short_body(answer.body), answer.headers
            )
        except (_Stale, TransientError) as exc:
            await r.failed(exc, r.pos > start)
        except (OSError, http.client.HTTPException) as exc:
            kind = _bulk_error_kind(exc)
            if attempt.status is None:
                record_request(call, kind)
            transient: TransientError = (
                Unavailable(f"cannot connect: {exc}", call=call)
                if kind == "connect"
                else TransientError(f"{type(exc).__name__}: {exc}", call=call)
            )
            await r.failed(transient, r.pos > start)
        except ValueError as exc:  # a URL http.client cannot use
            raise ProtocolError(f"bad download URL: {exc}", call=call) from None


async def download_batch(
    bulk: BulkClient,
    call: str,
    items: Sequence[tuple[GetTarget, int, RangeSink]],
    *,
    json_error: Callable[[bytes], ProviderError | None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Read-ahead of small objects, whole: ``(get_target, size, sink)`` each, received one after
    another in ONE worker-thread job (a ``cp -r`` of a folder of small files: one job and one
    hand-off per batch instead of a task, a thread job and their hand-offs per file). Best
    effort, without retries: an item arrived when its sink got all ``size`` bytes (the caller
    looks at the sinks); any other answer, error or cut leaves it to the object's own read,
    through :func:`download_range` (retries, fresh links, error classification). ``stop`` set: the
    GETs not started yet are not sent (the one under way finishes). ``json_error``: JSON
    answers are sniffed (EnOS error envelopes); one that is not an error is the file's bytes."""
    provider = split_call(call)[0]
    jobs: list[tuple[Target, int, RangeSink, Attempt] | None] = [None] * len(items)

    async def resolve(i: int, get_target: GetTarget, size: int, sink: RangeSink) -> None:
        try:
            target = await get_target(False)  # prepared ahead (KooDrive links): no call
        except ProviderError as exc:
            log.debug("%s: no target for a read-ahead: %s", call, exc)
            return
        jobs[i] = (target, size, sink, Attempt(provider))

    async with trio.open_nursery() as nursery:  # at once: links not prepared share one call
        for i, (get_target, size, sink) in enumerate(items):
            nursery.start_soon(resolve, i, get_target, size, sink)

    def run() -> None:
        for job in jobs:
            if job is None or (stop is not None and stop.is_set()):
                continue
            target, size, sink, attempt = job
            try:
                answer = bulk.get_into(
                    target.url, target.params, dict(target.headers), 0, size, sink, attempt,
                    json_error is not None, size,
                )  # fmt: skip
            except Stopped:
                raise
            except (OSError, http.client.HTTPException, ValueError, ProviderError) as exc:
                log.debug("%s: read-ahead GET failed: %s", call, exc)
                continue
            if answer.body and _json_content(answer, size, json_error):
                _feed_whole(sink, answer.body)
            elif answer.received != size:
                log.debug("%s: read-ahead GET answered %d", call, answer.status)

    try:
        await trio.to_thread.run_sync(run, abandon_on_cancel=True)
    except BaseException:
        for job in jobs:
            if job is not None:
                job[3].stop()  # the thread stops at its next receive
        raise
    finally:
        for job in jobs:
            if job is not None and job[3].status is not None:
                record_request(call, job[3].status)


def _json_content(
    answer: Answer, size: int, json_error: Callable[[bytes], ProviderError | None] | None
) -> bool:
    """A JSON answer of a batch that is the object's own bytes (not an error envelope)."""
    return (
        json_error is not None
        and answer.status in (200, 206)
        and not answer.bad_range
        and len(answer.body) == size
        and size < MAX_JSON_BODY
        and json_error(answer.body) is None
    )


def _feed_whole(sink: RangeSink, body: bytes) -> None:
    """In the worker thread: a whole small body into ``sink`` (which takes it as received)."""
    data = memoryview(body)
    pos = 0
    while pos < len(data):
        view = sink.buffer(pos)
        n = min(len(view), len(data) - pos)
        view[:n] = data[pos : pos + n]
        sink.received(pos, n)
        pos += n


def _refresh_or_raise(exc: _Stale, in_a_row: int, call: str, pos: int) -> None:
    """A rejected target: refresh it (twice in a row at most), else the final error."""
    if in_a_row > 2:
        if exc.status == 404:  # a fresh link does not find it either: it is gone
            raise ObjectNotFound("object not found even with a fresh link", call=call) from None
        raise AuthError(f"download rejected ({exc}) even with a fresh link", call=call) from None
    log.warning("%s: link/credentials rejected (%s) at byte %d; refreshing", call, exc, pos)


async def _backoff(
    exc: TransientError, call: str, pos: int, failures: int, policy: RetryPolicy
) -> None:
    limit = policy.unavailable_attempts if isinstance(exc, Unavailable) else policy.attempts
    if failures >= limit:
        raise exc
    delay = policy.delay(max(failures, 1), exc.retry_after)
    log.warning(
        "%s failed at byte %d (%s); resuming (%d/%d) in %.2fs",
        call,
        pos,
        exc,
        failures,
        limit - 1,
        delay,
    )
    record_retry(call, exc, delay)
    await trio.sleep(delay)


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            yield from _leaves(sub)
    else:
        yield exc


async def gather_limited(fns: list[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    """Run ``fns`` concurrently, ``limit`` at a time; results in order.

    If a call fails the others are cancelled and the first ``ProviderError`` is raised bare (not
    wrapped in an ExceptionGroup), so callers see the provider error tree.
    """
    results: list[T | None] = [None] * len(fns)
    limiter = trio.CapacityLimiter(max(1, limit))

    async def run(i: int, fn: Callable[[], Awaitable[T]]) -> None:
        async with limiter:
            results[i] = await fn()

    try:
        async with trio.open_nursery() as nursery:
            for i, fn in enumerate(fns):
                nursery.start_soon(run, i, fn)
    except BaseExceptionGroup as group:
        for leaf in _leaves(group):
            if isinstance(leaf, ProviderError):
                raise leaf from group
        for leaf in _leaves(group):
            if not isinstance(leaf, trio.Cancelled):
                raise leaf from group
        raise
    return results  # type: ignore[return-value]
