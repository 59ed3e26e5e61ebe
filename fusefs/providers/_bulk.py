"""Object bodies off the event loop: ``http.client`` in worker threads, received straight into
the cache's buffers.

Why not httpx for the bytes: under trio, httpx/h11 tops out at ~330-360 MB/s on loopback on the
dev machine (h11 copies every byte twice, and every chunk is a Python round trip on the event
loop); ``http.client`` ``readinto`` of a Content-Length body goes from the socket into our buffer
in one copy, in a worker thread that does not hold the GIL while it waits (~2700 MB/s measured
there, 4700 with two threads). urllib3 would give the same pool, but its ``readinto`` reads into
a temporary and copies. pycurl (libcurl) was the other candidate; its write callback hands Python
one small bytes object per chunk. httpx keeps every API call (auth, listings, links, retries).

What this module owns: a keep-alive connection pool per (scheme, host, port), TLS with the
system trust store (``SSL_CERT_FILE``/``SSL_CERT_DIR`` honoured) or the configured CA bundle,
proxies from the environment as httpx does (``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY``), a
connect and a per-receive timeout. What it does not own: retries, link refresh, error
classification, resume — :func:`fusefs.providers._http.download_range` drives those on the
event loop, one attempt per worker-thread call.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import threading
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

from fusefs import metrics
from fusefs.providers.base import RangeSink

log = logging.getLogger(__name__)

_MAX_ERROR_BODY = 64 << 10
MAX_JSON_BODY = 64 << 20  # a JSON answer (maybe an error envelope) is read whole up to this
_SKIP_CHUNK = 1 << 20


class Stopped(Exception):
    """The download was cancelled from the event loop."""


@dataclass(slots=True)
class Answer:
    """What one GET attempt got."""

    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes = b""  # the body of a non-2xx (or JSON) answer, capped
    received: int = 0  # bytes put into the sink
    complete: bool = False  # the body ended where it should (or ``end`` was reached)
    bad_range: bool = False  # a 206 that does not start at the byte asked for: nothing received
    # the body ended as its own framing said (Content-Length met, or the last chunk), before
    # ``end``: the server answered less than asked on purpose; trying again gets the same
    ended_short: bool = False


@dataclass(slots=True)
class Attempt:
    """One GET: the event loop may ``stop()`` it; the worker thread checks between receives.

    ``provider`` labels the bytes received (``fusefs_downloaded_bytes``, counted per receive: at
    most a sink buffer, a cache block); ``status`` is set once the answer's head has come."""

    provider: str = ""
    stopped: threading.Event = field(default_factory=threading.Event)
    conn: http.client.HTTPConnection | None = None
    status: int | None = None

    def stop(self) -> None:
        self.stopped.set()
        conn = self.conn
        sock = conn.sock if conn is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class BulkClient:
    """A small thread-safe pool of ``http.client`` connections for object bodies."""

    def __init__(
        self,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        ca_bundle: str | None = None,
        proxy: str | None = None,
        user_agent: str = "fusefs",
        max_idle: int = 32,
    ) -> None:
        self._proxy = proxy  # None: from the environment, as httpx does
        self._env_proxies: dict[tuple[str, str], str | None] = {}
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.user_agent = user_agent
        self._ssl = ssl.create_default_context(cafile=ca_bundle)
        self._idle: dict[tuple[str, str, int], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._max_idle = max_idle
        self.connections_opened = 0

    # -- connections (any thread) ------------------------------------------------------------
    def _new(self, scheme: str, host: str, port: int) -> http.client.HTTPConnection:
        proxy = self._proxy_for(scheme, host)
        conn: http.client.HTTPConnection
        if proxy is not None:
            p = urlsplit(proxy)
            phost, pport = p.hostname or "", p.port or (443 if p.scheme == "https" else 80)
            if scheme == "https":
                conn = http.client.HTTPSConnection(
                    phost, pport, timeout=self.connect_timeout, context=self._ssl
                )
                conn.set_tunnel(host, port)
            else:
                conn = http.client.HTTPConnection(phost, pport, timeout=self.connect_timeout)
        elif scheme == "https":
            conn = http.client.HTTPSConnection(
                host, port, timeout=self.connect_timeout, context=self._ssl
            )
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.connect_timeout)
        self.connections_opened += 1
        return conn

    def _take(self, key: tuple[str, str, int]) -> http.client.HTTPConnection:
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop()
        return self._new(*key)

    def _give_back(self, key: tuple[str, str, int], conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self._max_idle:
                idle.append(conn)
                return
        conn.close()

    def _proxy_for(self, scheme: str, host: str) -> str | None:
        if self._proxy is not None:
            return self._proxy
        # the environment's answer, once per host: reading it scans os.environ, which cost
        # ~5 % of the daemon's Python time in a ``cp -r`` of small files (two asks per GET)
        key = (scheme, host)
        try:
            return self._env_proxies[key]
        except KeyError:
            proxy = self._env_proxies[key] = _env_proxy_for(scheme, host)
            return proxy

    def close(self) -> None:
        with self._lock:
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for c in conns:
            c.close()

    # -- one GET (worker thread) -------------------------------------------------------------
    def get_into(
        self,
        url: str,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str],
        pos: int,
        end: int | None,
        sink: RangeSink,
        attempt: Attempt,
        sniff_json: bool = False,
        expected_total: int | None = None,
    ) -> Answer:
        """GET ``url`` with ``Range: bytes=pos-(end-1)`` and receive the body into ``sink``.

        A 206 whose Content-Range starts at ``pos`` and a 200 (skipped forward to ``pos``) are
        received; anything else, and a JSON answer if ``sniff_json``, comes back with its body
        for the caller to classify. With ``expected_total`` (the listed size), an answer that
        reports another total size (Content-Range, or a 200's Content-Length) comes back before
        a byte of it is received: bytes of another version never reach the sink. Transport
        errors raise ``OSError`` or ``http.client.HTTPException``.
        """
        u = urlsplit(url)
        scheme = u.scheme.lower()
        if scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"unsupported URL {url!r}")
        port = u.port or (443 if scheme == "https" else 80)
        key = (scheme, u.hostname, port)
        target = u.path or "/"
        query = u.query
        if params:
            query = (query + "&" if query else "") + urlencode(params)
        if query:
            target += "?" + query
        if scheme == "http" and self._proxy_for(scheme, u.hostname) is not None:
            target = f"http://{u.netloc}{target}"
        hdrs = {"User-Agent": self.user_agent, "Accept-Encoding": "identity", **headers}
        hdrs["Range"] = f"bytes={pos}-" if end is None else f"bytes={pos}-{end - 1}"
        conn = self._take(key)
        attempt.conn = conn
        reusable = False
        try:
            if attempt.stopped.is_set():
                raise Stopped
            reused = conn.sock is not None
            try:
                resp = self._send(conn, target, hdrs)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                if not reused or attempt.stopped.is_set():
                    raise
                # a kept-alive connection the server had closed meanwhile: one fresh try
                conn.close()
                conn = self._new(*key)
                attempt.conn = conn
                resp = self._send(conn, target, hdrs)
            attempt.status = resp.status
            answer = Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()})
            ctype = answer.headers.get("content-type", "").lower()
            if resp.status not in (200, 206):
                answer.body = resp.read(_MAX_ERROR_BODY)
                reusable = resp.isclosed()
                return answer
            if sniff_json and "json" in ctype:
                answer.body = resp.read(MAX_JSON_BODY)
                reusable = resp.isclosed()
                return answer
            total: int | None = None
            if resp.status == 206:
                cr = content_range(answer.headers.get("content-range"))
                if cr is None or cr[0] != pos:
                    answer.bad_range = True
                    return answer
                total = cr[2]
            else:
                cl = answer.headers.get("content-length", "")
                total = int(cl) if cl.isascii() and cl.isdigit() else None
            if expected_total is not None and total is not None and total != expected_total:
                return answer  # another size: the caller raises VersionMismatch
            if resp.status == 200 and pos:
                self._skip(resp, pos, attempt)
            answer.received, answer.complete, answer.ended_short = self._receive(
                resp, pos, end, sink, attempt
            )
            reusable = answer.complete and resp.isclosed()
            return answer
        finally:
            attempt.conn = None
            if reusable and not attempt.stopped.is_set():
                self._give_back(key, conn)
            else:
                conn.close()

    def _send(
        self, conn: http.client.HTTPConnection, target: str, hdrs: dict[str, str]
    ) -> http.client.HTTPResponse:
        """Connect (within the connect timeout), then send and wait for the answer's head
        within the read timeout, which also bounds every later receive."""
        if conn.sock is None:
            conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(self.read_timeout)
        conn.request("GET", target, headers=hdrs)
        return conn.getresponse()

    @staticmethod
    def _skip(resp: http.client.HTTPResponse, n: int, attempt: Attempt) -> None:
        scratch = memoryview(bytearray(min(n, _SKIP_CHUNK)))
        while n:
            if attempt.stopped.is_set():
                raise Stopped
            got = resp.readinto(scratch[: min(n, len(scratch))])
            if not got:
                raise http.client.IncompleteRead(b"", n)
            n -= got

    @staticmethod
    def _receive(
        resp: http.client.HTTPResponse,
        pos: int,
        end: int | None,
        sink: RangeSink,
        attempt: Attempt,
    ) -> tuple[int, bool, bool]:
        """(bytes received, complete, ended short: the body ended as framed before ``end``)."""
        start = pos
        while end is None or pos < end:
            if attempt.stopped.is_set():
                raise Stopped
            view = sink.buffer(pos)
            if end is not None and len(view) > end - pos:
                view = view[: end - pos]
            try:
                n = resp.readinto(view)
            except (OSError, http.client.HTTPException):
                if pos == start:
                    raise
                # cut mid-body (a reset): the sink keeps what it was given, the caller resumes
                # from here (raising would lose the count of bytes the sink already has)
                return pos - start, False, False
            if not n:
                # the body ended: complete if the server said it would end here
                if end is None:
                    return pos - start, resp.isclosed(), False
                # before ``end``: as framed (all of Content-Length came, or the last chunk)
                # means the server answered less than asked; else the connection was cut
                # (http.client's readinto answers 0 then too, it does not raise)
                framed = resp.length == 0 or (resp.chunked and resp.isclosed())
                return pos - start, False, bool(framed)
            sink.received(pos, n)
            metrics.downloaded(attempt.provider, n)
            pos += n
        # reached ``end``: the connection is reusable only if the body ended here too
        return pos - start, True, False


def content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``bytes a-b/total`` → (a, b, total or None)."""
    if not value:
        return None
    try:
        unit, _, rest = value.strip().partition(" ")
        span, _, total = rest.partition("/")
        first, _, last = span.partition("-")
        if unit.lower() != "bytes":
            return None
        return int(first), int(last), (None if total.strip() in ("", "*") else int(total))
    except ValueError:
        return None


def _env_proxy_for(scheme: str, host: str) -> str | None:
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(scheme) or proxies.get("all")
    if not proxy:
        return None
    if urllib.request.proxy_bypass_environment(host, proxies):  # type: ignore[attr-defined]
        return None
    return proxy
