"""A real ``redis-server`` per test: loopback, a free port, a temp dir, persistence off."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from fusefs.fleet import FleetConfig, FleetTier

REDIS_SERVER = shutil.which("redis-server")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if REDIS_SERVER:
        return
    here = Path(__file__).parent
    mine = [i for i in items if here in i.path.parents]
    if not mine:
        return
    if os.environ.get("FUSEFS_REQUIRE_FUSE"):  # CI: a machine without redis-server is a failure
        raise pytest.UsageError("redis-server is missing; scripts/install installs it")
    skip = pytest.mark.skip(reason="redis-server is missing (scripts/install installs it)")
    for item in mine:
        item.add_marker(skip)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process; ``kill()`` and ``start()`` again keep the port."""

    def __init__(self, workdir: Path, extra: list[str] | None = None, *, tls: bool = False) -> None:
        self.dir = workdir
        self.extra = extra or []
        self.tls = tls  # TLS only (rediss://), with a test CA made here (``ca``)
        self.ca = workdir / "ca.crt"
        if tls:
            make_certs(workdir)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER and self.proc is None
        for _ in range(5):  # a port found free may be taken before the server binds it
            port = self.port or free_port()
            listen = ["--port", str(port)]
            if self.tls:
                d = self.dir
                listen = [
                    "--port", "0", "--tls-port", str(port), "--tls-auth-clients", "no",
                    "--tls-cert-file", str(d / "srv.crt"), "--tls-key-file", str(d / "srv.key"),
                    "--tls-ca-cert-file", str(self.ca),
                ]  # fmt: skip
            args = [
                REDIS_SERVER,
                *listen,
                "--bind", "127.0.0.1",
                "--dir", str(self.dir),
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--logfile", str(self.dir / "redis.log"),
                *self.extra,
            ]  # fmt: skip
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
            if self._wait_up(port):
                self.port = port
                return
            self._reap()
            if self.port:  # restarting on the same port: give the old socket a moment
                time.sleep(0.2)
        raise RuntimeError(f"redis-server did not start; see {self.dir / 'redis.log'}")

    def _wait_up(self, port: int) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            if self._pong(port):
                return True
            time.sleep(0.02)
        return False

    def _pong(self, port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5) as s:
                conn: socket.socket = s
                if self.tls:
                    ctx = ssl.create_default_context(cafile=self.ca)
                    conn = ctx.wrap_socket(s, server_hostname="127.0.0.1")
                conn.sendall(b"PING\r\n")
                return conn.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def _reap(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        """Dies at once (SIGKILL), as when the Redis host goes away."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self._reap()
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)


def make_certs(d: Path) -> None:
    """A test CA and a server certificate for 127.0.0.1 signed by it (openssl)."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=fusefs test CA")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "srv.crt", "-days", "2", "-extfile", "ext")  # fmt: skip


def make_tier(server: RedisServer, **overrides: Any) -> FleetTier:
    """A tier ("a host") with short timeouts, its own connection pool."""
    block_size = overrides.pop("block_size", 1 << 16)
    kw: dict[str, Any] = {
        "url": server.url,
        "connect_timeout": 0.3,
        "op_timeout": 0.5,
        "retry_after": 0.2,
        "retry_max": 0.4,
        "lease_seconds": 2.0,
        "lease_wait": 3.0,
        **overrides,
    }
    return FleetTier(FleetConfig(**kw), block_size=block_size)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client on the test's server, to look at and damage what the tier wrote."""
    r = redis_server.client()
    try:
        yield r
    finally:
        r.close()
