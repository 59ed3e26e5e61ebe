"""A delaying HTTP/1.1 reverse proxy: every request waits ``--delay`` seconds before it is sent on.

``python -m benchmarks.proxy --upstream 127.0.0.1:PORT --delay 0.02 --port-file F`` listens on
127.0.0.1 (``--port``, default ephemeral; written to ``F`` once it accepts) and forwards each
request to the upstream (nginx) over one keep-alive upstream connection per client connection.
The delay runs from the moment the request head has arrived, so every request of every client
waits the same time before its answer starts. Bodies are streamed, never buffered whole:
Content-Length bodies go socket → pipe → socket with ``splice(2)`` (no copy through user space),
chunked ones (nginx's autoindex pages) are relayed chunk by chunk.

One thread per client connection (blocking sockets): the clients of the bench open at most a few
dozen connections. This is the ``wan`` profile of the benchmark, used by every system alike
(curl, rclone, httpdirfs and the links fusefs gets from the emulator). It imports nothing from
fusefs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

PIECE = 1 << 20
HEAD_LIMIT = 64 << 10


class Closed(Exception):
    """The peer closed the connection (or sent garbage): drop the pair."""


class Conn:
    """A blocking socket with a read buffer for heads and chunk lines."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _fill(self) -> None:
        data = self.sock.recv(256 << 10)
        if not data:
            raise Closed()
        self.buf += data

    def read_until(self, sep: bytes, limit: int = HEAD_LIMIT) -> bytes:
        start = 0
        while True:
            i = self.buf.find(sep, start)
            if i >= 0:
                out = bytes(self.buf[: i + len(sep)])
                del self.buf[: i + len(sep)]
                return out
            if len(self.buf) > limit:
                raise Closed()
            start = max(0, len(self.buf) - len(sep) + 1)
            self._fill()

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def relay(self, dst: socket.socket, n: int, pipe: tuple[int, int]) -> None:
        """Send the next ``n`` body bytes to ``dst``: the buffer first, then splice."""
        if self.buf:
            take = min(n, len(self.buf))
            dst.sendall(self.buf[:take])
            del self.buf[:take]
            n -= take
        rfd, wfd = pipe
        src, out = self.sock.fileno(), dst.fileno()
        while n > 0:
            got = os.splice(src, wfd, min(n, PIECE))
            if got == 0:
                raise Closed()
            n -= got
            while got:
                got -= os.splice(rfd, out, got)

    def relay_to_close(self, dst: socket.socket, pipe: tuple[int, int]) -> None:
        if self.buf:
            dst.sendall(self.buf)
            self.buf.clear()
        rfd, wfd = pipe
        while got := os.splice(self.sock.fileno(), wfd, PIECE):
            while got:
                got -= os.splice(rfd, dst.fileno(), got)


def parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    """(first line, lower-cased headers) of a request or response head."""
    lines = head.decode("latin-1").split("\r\n")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise Closed()
        key = name.strip().lower()
        value = value.strip()
        fields[key] = f"{fields[key]}, {value}" if key in fields else value
    return lines[0], fields


def body_kind(fields: dict[str, str]) -> tuple[str, int]:
    if "chunked" in fields.get("transfer-encoding", "").lower():
        return "chunked", 0
    if "content-length" in fields:
        return "length", int(fields["content-length"].split(",")[0])
    return "none", 0


def relay_chunked(src: Conn, dst: socket.socket, pipe: tuple[int, int]) -> None:
    while True:
        line = src.read_until(b"\r\n")
        dst.sendall(line)
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while True:  # trailers, then the empty line
                trailer = src.read_until(b"\r\n")
                dst.sendall(trailer)
                if trailer == b"\r\n":
                    return
        src.relay(dst, size, pipe)
        dst.sendall(src.read_exact(2))


class Proxy:
    def __init__(self, upstream: tuple[str, int], delay: float) -> None:
        self.upstream = upstream
        self.delay = delay

    def serve_connection(self, client_sock: socket.socket) -> None:
        client = Conn(client_sock)
        upstream: Conn | None = None
        pipe = os.pipe()
        with contextlib.suppress(OSError):
            import fcntl

            fcntl.fcntl(pipe[1], 1031, PIECE)  # F_SETPIPE_SZ
        try:
            while True:
                head = client.read_until(b"\r\n\r\n")
                arrived = time.monotonic()
                request_line, fields = parse_head(head)
                method = request_line.split(" ", 1)[0].upper()
                wait = arrived + self.delay - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                kind, n = body_kind(fields)
                if upstream is not None and kind == "none":
                    # a kept-alive upstream may have closed meanwhile: probe before reusing it
                    try:
                        upstream.sock.sendall(head)
                        rhead = upstream.read_until(b"\r\n\r\n")
                    except (Closed, OSError):
                        upstream.sock.close()
                        upstream = None
                    else:
                        upstream.buf[:0] = rhead  # read again below
                        head = b""
                if upstream is None:
                    upstream = Conn(socket.create_connection(self.upstream))
                if head:
                    upstream.sock.sendall(head)
                if kind == "length":
                    client.relay(upstream.sock, n, pipe)
                elif kind == "chunked":
                    relay_chunked(client, upstream.sock, pipe)
                while True:  # interim 1xx answers are forwarded as they come
                    rhead = upstream.read_until(b"\r\n\r\n")
                    status_line, rfields = parse_head(rhead)
                    status = int(status_line.split(" ", 2)[1])
                    client.sock.sendall(rhead)
                    if status >= 200:
                        break
                close = "close" in rfields.get("connection", "").lower() or (
                    "close" in fields.get("connection", "").lower()
                )
                if method != "HEAD" and status not in (204, 304):
                    rkind, rn = body_kind(rfields)
                    if rkind == "length":
                        upstream.relay(client.sock, rn, pipe)
                    elif rkind == "chunked":
                        relay_chunked(upstream, client.sock, pipe)
                    else:
                        upstream.relay_to_close(client.sock, pipe)
                        close = True
                if close:
                    return
        except (Closed, OSError, ValueError, IndexError):
            return
        finally:
            for fd in pipe:
                os.close(fd)
            for c in (client, upstream):
                if c is not None:
                    with contextlib.suppress(OSError):
                        c.sock.close()


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def serve(upstream: tuple[str, int], delay: float, port: int, port_file: Path | None) -> None:
    proxy = Proxy(upstream, delay)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(1024)
    if port_file is not None:
        _write_atomic(port_file, f"{listener.getsockname()[1]}\n")

    def stop(signum: int, frame: object) -> None:
        if port_file is not None:
            port_file.unlink(missing_ok=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=proxy.serve_connection, args=(sock,), daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.proxy", description=__doc__)
    ap.add_argument("--upstream", required=True, help="HOST:PORT of the origin (plain HTTP)")
    ap.add_argument("--delay", type=float, default=0.02, help="seconds each request waits")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", type=Path)
    args = ap.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    serve((host, int(port)), args.delay, args.port, args.port_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
