"""download_range + BulkClient against a real HTTP server on 127.0.0.1 (a thread of this process):
cuts, truncated bodies, ignored ranges, wrong Content-Range, expiring links, size changes,
stalls, and TLS with a CA bundle. The witness is the bytes the sink received."""

from __future__ import annotations

import http.server
import os
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from fusefs.providers._bulk import BulkClient
from fusefs.providers._http import RetryPolicy, Target, download_range
from fusefs.providers.base import AuthError, ProtocolError, TransientError, VersionMismatch

FAST = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.02, unavailable_attempts=2)


class _State:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.valid_link = "l1"
        self.cut_after: int | None = None  # close the connection after this many body bytes
        self.rst_after: int | None = None  # ... and reset it (RST: the reader sees an error)
        self.truncate_after: int | None = None  # full Content-Length, fewer bytes, close
        self.ignore_range = False
        self.wrong_range = False
        self.stall: float = 0.0
        self.requests = 0


def _handler(state: _State) -> type[http.server.BaseHTTPRequestHandler]:
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            state.requests += 1
            if f"link={state.valid_link}" not in self.path:
                body = b"<Error><Code>AccessDenied</Code></Error>"
                self.send_response(403)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            data = state.data
            first, last = self.headers["Range"].removeprefix("bytes=").split("-")
            a, b = int(first), (int(last) if last else len(data) - 1)
            if state.stall:
                time.sleep(state.stall)
            if state.ignore_range:
                body, status = data, 200
            else:
                body, status = data[a : b + 1], 206
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            if status == 206:
                start = a + 1 if state.wrong_range else a
                self.send_header("Content-Range", f"bytes {start}-{b}/{len(data)}")
            self.end_headers()
            if state.cut_after is not None:
                n, state.cut_after = state.cut_after, None
                self.wfile.write(body[:n])
                self.wfile.flush()
                self.connection.shutdown(2)
                return
            if state.rst_after is not None:
                n, state.rst_after = state.rst_after, None
                self.wfile.write(body[:n])
                self.wfile.flush()
                time.sleep(0.1)  # the bytes reach the reader before the reset
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()
                self.close_connection = True
                return
            if state.truncate_after is not None:
                n, state.truncate_after = state.truncate_after, None
                self.wfile.write(body[:n])
                self.close_connection = True
                return
            self.wfile.write(body)

    return H


@pytest.fixture
def server() -> Iterator[tuple[str, _State]]:
    state = _State(os.urandom(3 << 20))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", state
    finally:
        srv.shutdown()
        srv.server_close()


class _Sink:
    """A RangeSink that collects bytes in odd-sized buffers (so cuts land mid-buffer)."""

    def __init__(self, start: int) -> None:
        self.start = start
        self.out = bytearray()
        self._buf = bytearray(100_000)

    def buffer(self, pos: int) -> memoryview:
        assert pos == self.start + len(self.out), (pos, self.start, len(self.out))
        return memoryview(self._buf)

    def received(self, pos: int, n: int) -> None:
        self.out += self._buf[:n]


async def _fetch(
    base: str, state: _State, offset: int, length: int, *, size: int | None = None
) -> bytes:
    links = iter(["l2", "l3"])
    current = ["l1"]

    async def target(stale: bool) -> Target:
        if stale:
            current[0] = next(links)
        return Target(f"{base}/obj", {}, {"link": current[0]})

    bulk = BulkClient(read_timeout=1.0)
    sink = _Sink(offset)
    try:
        await download_range(
            bulk,
            "t",
            target,
            offset,
            length,
            sink,
            expected_size=len(state.data) if size is None else size,
            policy=FAST,
        )
    finally:
        bulk.close()
    return bytes(sink.out)


async def test_plain_range(server: tuple[str, _State]) -> None:
    base, s = server
    assert await _fetch(base, s, 12345, 1 << 20) == s.data[12345 : 12345 + (1 << 20)]
    assert s.requests == 1


async def test_resumes_after_a_reset_and_a_truncation(server: tuple[str, _State]) -> None:
    base, s = server
    s.cut_after = 70_001
    assert await _fetch(base, s, 0, 2 << 20) == s.data[: 2 << 20]
    s.truncate_after = 333_333
    assert await _fetch(base, s, 5, 2 << 20) == s.data[5 : 5 + (2 << 20)]


async def test_a_connection_reset_mid_body_resumes_from_the_byte_reached(
    server: tuple[str, _State],
) -> None:
    """A reset (ECONNRESET, not an orderly close) after some bytes: the sink keeps them and the
    next request asks from there (the sink refuses any other byte)."""
    base, s = server
    s.rst_after = 250_001
    assert await _fetch(base, s, 7, 1 << 20) == s.data[7 : 7 + (1 << 20)]
    assert s.requests == 2


async def test_ignored_range_is_skipped_forward(server: tuple[str, _State]) -> None:
    base, s = server
    s.ignore_range = True
    assert await _fetch(base, s, 1_500_000, 4096) == s.data[1_500_000:1_504_096]


async def test_wrong_content_range_is_refused_before_any_byte(server: tuple[str, _State]) -> None:
    base, s = server
    s.wrong_range = True
    with pytest.raises(ProtocolError):
        await _fetch(base, s, 100, 1000)


async def test_expired_link_is_replaced(server: tuple[str, _State]) -> None:
    base, s = server
    s.valid_link = "l2"
    assert await _fetch(base, s, 0, 50_000) == s.data[:50_000]
    s.valid_link = "never"
    with pytest.raises(AuthError):
        await _fetch(base, s, 0, 10)


async def test_size_change_is_a_version_mismatch(server: tuple[str, _State]) -> None:
    base, s = server
    with pytest.raises(VersionMismatch):
        await _fetch(base, s, 0, 100, size=len(s.data) + 1)


async def test_another_size_is_refused_before_any_byte(server: tuple[str, _State]) -> None:
    """Bytes of another version never reach the sink (the cache) under the listed version."""
    base, s = server
    sink = _Sink(0)
    bulk = BulkClient(read_timeout=1.0)

    async def target(stale: bool) -> Target:
        return Target(f"{base}/obj", {}, {"link": "l1"})

    try:
        for ignore_range in (False, True):  # the size from Content-Range, then Content-Length
            s.ignore_range = ignore_range
            with pytest.raises(VersionMismatch):
                await download_range(
                    bulk, "t", target, 0, 100_000, sink, expected_size=len(s.data) - 1, policy=FAST
                )
            assert sink.out == b""
    finally:
        bulk.close()


async def test_a_stalled_server_is_bounded(server: tuple[str, _State]) -> None:
    base, s = server
    s.stall = 1.5  # longer than the 1 s read timeout, every time
    with trio.fail_after(30), pytest.raises(TransientError):
        await _fetch(base, s, 0, 1000)


async def test_connection_refused_is_unavailable() -> None:
    from fusefs.providers.base import Unavailable

    with pytest.raises(Unavailable):
        await _fetch("http://127.0.0.1:9", _State(b"x"), 0, 1)


async def test_tls_with_a_ca_bundle(tmp_path: Path) -> None:
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    state = _State(os.urandom(300_000))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    base = f"https://127.0.0.1:{srv.server_address[1]}"
    try:

        async def target(stale: bool) -> Target:
            return Target(f"{base}/obj", {}, {"link": "l1"})

        # without the CA: refused (a certificate error is not retried into success)
        bulk = BulkClient(read_timeout=2.0)
        with pytest.raises(TransientError):
            await download_range(bulk, "t", target, 0, 10, _Sink(0), policy=FAST)
        bulk.close()
        bulk = BulkClient(read_timeout=2.0, ca_bundle=str(cert))
        sink = _Sink(1000)
        await download_range(bulk, "t", target, 1000, 200_000, sink, policy=FAST)
        bulk.close()
        assert bytes(sink.out) == state.data[1000:201_000]
    finally:
        srv.shutdown()
        srv.server_close()
