"""The fleet tier: blocks, download leases, a fleet-wide download window, one-shot archives and
(opt-in) tokens shared by several hosts through one Redis (docs/fleet.md).

Every call is async and bounded in time, and none raises because of Redis: when Redis cannot be
reached the tier logs one line, answers "unavailable" (None / False) at once until a back-off has
passed, tries again on the next call after it, and logs one line when Redis is back. The caller then
does what a single host does: it goes to the cloud. The one exception that leaves the module is
:class:`NotPublished` (besides :class:`FleetConfigError` for a bad configuration), a fact about
the fleet (another host consumed a one-shot download and did not publish it), not a Redis failure.

redis-py's synchronous client runs in worker threads (``trio.to_thread.run_sync``), one connection
pool per tier, socket timeouts on every call; docs/fleet.md says why not an async client.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import secrets
import socket
import stat
import struct
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import redis
import trio
from redis.backoff import NoBackoff
from redis.retry import Retry

from fusefs.cache.tier import BlockId, WholeId
from fusefs.providers.base import EntryKind, RemoteEntry

log = logging.getLogger(__name__)

T = TypeVar("T")

# -- the value format --------------------------------------------------------------------------
# Every value the tier writes (a block, a part of an archive, an archive's manifest, a token) is
# MAGIC + format + CRC32 + length + the bytes, so a truncated, overwritten or foreign value is
# told from a good one before it is served.
MAGIC = b"FFT"
FORMAT = 1
_HEADER = struct.Struct(">3sBIQ")  # magic, format, crc32 of the data, length of the data
HEADER_SIZE = _HEADER.size


def pack(data: bytes | bytearray | memoryview) -> bytes:
    """``data`` with the tier's header in front."""
    return _HEADER.pack(MAGIC, FORMAT, zlib.crc32(data), len(data)) + bytes(data)


def unpack(value: bytes) -> tuple[bytes | None, str]:
    """The data of a packed value, or (None, why it is not valid)."""
    if len(value) < HEADER_SIZE:
        return None, f"truncated header ({len(value)} bytes)"
    magic, fmt, crc, length = _HEADER.unpack_from(value)
    if magic != MAGIC:
        return None, "not a fleet value"
    if fmt != FORMAT:
        return None, f"format {fmt}, expected {FORMAT}"
    if len(value) - HEADER_SIZE != length:
        return None, f"length {len(value) - HEADER_SIZE}, header says {length}"
    data = value[HEADER_SIZE:]
    if zlib.crc32(data) != crc:
        return None, "CRC mismatch"
    return data, ""


# -- configuration -----------------------------------------------------------------------------
class FleetError(Exception):
    """Base of the errors this module raises (never for a Redis failure)."""


class FleetConfigError(FleetError, ValueError):
    """The fleet configuration cannot be used; the message says what to fix."""


class NotPublished(FleetError):
    """A one-shot download was claimed by another host, which has not published the result."""


def load_secret(
    env_var: str | None = None,
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> str:
    """A secret from an environment variable (by name) or a file readable only by its owner."""
    if (env_var is None) == (path is None):
        raise FleetConfigError("give either an environment variable or a file for the secret")
    if env_var is not None:
        val = (os.environ if environ is None else environ).get(env_var, "")
        if not val:
            raise FleetConfigError(f"environment variable {env_var} is not set")
        return val
    p = Path(os.fspath(cast(str, path))).expanduser()
    try:
        st = p.stat()
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise FleetConfigError(f"cannot read {p}: {exc.strerror or exc}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise FleetConfigError(
            f"{p} is accessible by group/others (mode {stat.S_IMODE(st.st_mode):o}); "
            f"run chmod 600 {p}"
        )
    val = text.strip("\r\n")
    if not val:
        raise FleetConfigError(f"{p} is empty")
    return val


def _default_host_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


_PREFIX_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_NAME_RE = re.compile(r"[a-z0-9_-]{1,32}")


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """Where the tier is and how it behaves. ``username``/``password`` never appear in a repr
    or a log line; give them with :func:`load_secret`, never inside ``url``."""

    url: str  # redis://host:port/db, or rediss:// for TLS
    key_prefix: str = "fusefs"
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    tls_ca_file: str | None = None  # rediss://: the CA to check the server with (else the system's)
    connect_timeout: float = 0.5
    op_timeout: float = 2.0  # socket timeout of each read/write on a connection
    retry_after: float = 2.0  # after a failure, the first retry; doubles up to retry_max
    retry_max: float = 30.0
    lease_seconds: float = 30.0  # a download lease lives this long unless refreshed
    lease_wait: float = 30.0  # how long a host waits for another host's download
    block_ttl: float = 7 * 86400.0  # blocks expire (and are evictable: volatile-lru)
    max_value_bytes: int = 64 << 20  # blocks larger than this are not published
    part_bytes: int = 4 << 20  # archives are written in parts of this size
    max_whole_bytes: int = 1 << 30
    staging_ttl: float = 3600.0  # parts of an archive not yet complete expire after this
    whole_ttl: float | None = None  # complete archives: None = kept (not evictable)
    share_tokens: bool = False  # tokens go through the tier only if asked for
    pool_size: int = 16
    host_id: str = field(default_factory=_default_host_id)  # in claims and leases, for diagnosis

    def __post_init__(self) -> None:
        u = urlsplit(self.url)
        if u.scheme not in ("redis", "rediss"):
            raise FleetConfigError(
                f"fleet url must start with redis:// or rediss://, not {u.scheme!r}"
            )
        if "@" in u.netloc:
            raise FleetConfigError(
                "fleet url must not carry credentials; give username/password from the "
                "environment or a 0600 file"
            )
        if not u.hostname:
            raise FleetConfigError("fleet url has no host")
        if not _PREFIX_RE.fullmatch(self.key_prefix):
            raise FleetConfigError("key_prefix: 1-64 of A-Z a-z 0-9 _ . : -")
        for name in ("connect_timeout", "op_timeout", "retry_after", "retry_max", "lease_seconds"):
            if not getattr(self, name) > 0:
                raise FleetConfigError(f"{name} must be > 0")
        if self.lease_wait < 0 or self.block_ttl <= 0 or self.staging_ttl <= 0:
            raise FleetConfigError("lease_wait must be >= 0, block_ttl and staging_ttl > 0")
        if self.whole_ttl is not None and self.whole_ttl <= 0:
            raise FleetConfigError("whole_ttl must be > 0 (or None: kept)")
        if self.part_bytes <= 0 or self.pool_size <= 0 or self.max_value_bytes <= 0:
            raise FleetConfigError("part_bytes, pool_size and max_value_bytes must be > 0")

    @property
    def tls(self) -> bool:
        return self.url.startswith("rediss:")


# -- keys --------------------------------------------------------------------------------------
def _digest(*parts: str) -> str:
    """128 bits of SHA-256 over the parts (length-prefixed: ("a", "bc") != ("ab", "c"))."""
    h = hashlib.sha256()
    for p in parts:
        b = p.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "big"))
        h.update(b)
    return h.hexdigest()[:32]


def _name(provider: str) -> str:
    """A provider's name as is when short and plain, else hashed."""
    return provider if _NAME_RE.fullmatch(provider) else "h" + _digest(provider)[:16]


# -- Lua scripts (atomic steps) ----------------------------------------------------------------
# compare-and-delete / compare-and-expire: a lease is given back or kept only by its holder
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# the block if present (its TTL renewed), else the lease if free: {1, value} | {2} | {0}
_TAKE = """
local v = redis.call('GET', KEYS[1])
if v then redis.call('PEXPIRE', KEYS[1], ARGV[3]) return {1, v} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
return {0}
"""
# a turn in the fleet's download window: the key holds the server time (ms) at which the next
# turn is free; take the first free slot and move it one interval on. Returns {wait ms, slot}.
_WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local nxt = tonumber(redis.call('GET', KEYS[1]) or '0')
local slot = math.max(now, nxt)
redis.call('SET', KEYS[1], string.format('%d', slot + interval), 'PX',
           string.format('%d', slot + interval - now))
return {slot - now, string.format('%d', slot)}
"""
# at its turn: record this start if an interval has passed since the last one, else return the
# milliseconds still to wait
_GO = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local last = redis.call('GET', KEYS[1])
if last and now - tonumber(last) < interval then return interval - (now - tonumber(last)) end
redis.call('SET', KEYS[1], string.format('%d', now), 'PX', string.format('%d', interval))
return 0
"""
# a cancelled waiter gives its turn back if no one has taken a later one
_GIVE_BACK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local slot = tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[1]) or '0') == slot + tonumber(ARGV[2]) and slot > now then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', string.format('%d', slot - now))
  return 1
end
return 0
"""
# a one-shot claim: "consumed" (no expiry) and "in progress" (a lease) at once
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
# publish a complete archive: every part must still be there; then the parts are made to stay
# and the manifest appears, in one step. 0: already published, -1: a part is missing.
_FLIP = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 3, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then return -1 end
end
local ttl = tonumber(ARGV[2])
for i = 3, #KEYS do
  if ttl > 0 then redis.call('PEXPIRE', KEYS[i], ttl) else redis.call('PERSIST', KEYS[i]) end
end
if ttl > 0 then redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
else redis.call('SET', KEYS[1], ARGV[1]) end
redis.call('DEL', KEYS[2])
return 1
"""


class _Unavailable(Exception):
    """Internal: Redis did not answer (already logged); the public call returns its fallback."""


@dataclass(slots=True)
class FleetStats:
    """Counters for metrics and tests."""

    hits: int = 0  # blocks served from the tier
    misses: int = 0
    published: int = 0  # blocks and archives written
    corrupt: int = 0  # entries found corrupt (deleted, never served)
    unavailable: int = 0  # calls answered with the fallback because Redis was not there
    outages: int = 0  # times the tier went down


@dataclass(frozen=True, slots=True)
class Fetch:
    """What :meth:`FleetTier.fetch_block` found.

    ``data``: the block, from the tier. ``lease``: no host had it and this host holds the
    download lease: download it, then ``await lease.publish(data)`` (or ``release()`` on failure).
    Neither: go to the cloud without a lease (tier unavailable, or the host downloading it did
    not publish it within ``lease_wait``)."""

    data: bytes | None = None
    lease: Lease | None = None
    waited: float = 0.0  # seconds spent waiting for another host


class Lease:
    """A download lease held by this host; it expires by itself if the host dies."""

    def __init__(
        self,
        tier: FleetTier,
        key: str,
        token: str,
        publish: Callable[[bytes], Awaitable[bool]],
    ) -> None:
        self._tier = tier
        self._key = key
        self._token = token
        self._publish = publish
        self.released = False

    def __repr__(self) -> str:
        return f"Lease({self._key!r}{', released' if self.released else ''})"

    async def publish(self, data: bytes) -> bool:
        """Publish what was downloaded, then give the lease back. True if it was published."""
        try:
            return await self._publish(data)
        finally:
            await self.release()

    async def release(self) -> None:
        """Give the lease back (nothing if it already expired or was given back)."""
        if self.released:
            return
        self.released = True
        with trio.CancelScope(shield=True):  # bounded by the tier's timeouts
            await self._tier._compare(_RELEASE, self._key, self._token)

    async def refresh(self) -> bool:
        """Keep the lease for another ``lease_seconds`` (a long download). False: it is lost."""
        if self.released:
            return False
        ms = str(int(self._tier.config.lease_seconds * 1000))
        return bool(await self._tier._compare(_REFRESH, self._key, self._token, ms))

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


# -- the tier ----------------------------------------------------------------------------------
class FleetTier:
    """One host's handle on the fleet tier (one connection pool). ``block_size`` is part of the
    block keys, like the local cache's file names: hosts with different sizes never mix."""

    _POLL_FIRST = 0.005
    _POLL_MAX = 0.1

    def __init__(self, config: FleetConfig, *, block_size: int = 1 << 20) -> None:
        if block_size <= 0:
            raise FleetConfigError("block_size must be > 0")
        self.config = config
        self.block_size = block_size
        self.stats = FleetStats()
        c = config
        kwargs: dict[str, Any] = {
            "max_connections": c.pool_size,
            "timeout": c.connect_timeout,  # waiting for a free connection of the pool
            "socket_timeout": c.op_timeout,
            "socket_connect_timeout": c.connect_timeout,
            # one retry, at once: a pooled connection that died with a Redis restart is replaced
            "retry": Retry(NoBackoff(), 1),
            "health_check_interval": 10,
        }
        if c.username is not None:
            kwargs["username"] = c.username
        if c.password is not None:
            kwargs["password"] = c.password
        if c.tls:
            kwargs["ssl_cert_reqs"] = "required"
            kwargs["ssl_check_hostname"] = True
            if c.tls_ca_file:
                kwargs["ssl_ca_certs"] = c.tls_ca_file
        self._pool = redis.BlockingConnectionPool.from_url(c.url, **kwargs)
        self._r = redis.Redis(connection_pool=self._pool)
        self._limiter = trio.CapacityLimiter(c.pool_size)
        self._threads = trio.CapacityLimiter(math.inf)  # the pool's limiter above bounds them
        self._scripts = {
            src: self._r.register_script(src)
            for src in (_RELEASE, _REFRESH, _TAKE, _WINDOW, _GO, _GIVE_BACK, _CLAIM, _FLIP)
        }
        p = c.key_prefix
        self._p = p
        # the state of the connection to Redis; touched by the event loop only
        self._down = False
        self._next_try = 0.0  # time.monotonic() of the next attempt while down
        self._backoff = c.retry_after
        self._probing = False
        self._refusals: set[str] = set()  # Redis error codes already logged
        self._lock = threading.Lock()  # for what the worker threads count and log once
        self._policy_warned = False

    def __repr__(self) -> str:
        u = urlsplit(self.config.url)
        where = f"{u.scheme}://{u.hostname}:{u.port or 6379}{u.path}"
        return f"FleetTier({where}, prefix={self._p!r}, {'down' if self._down else 'up'})"

    @property
    def available(self) -> bool:
        """False while the tier is marked down (between a failure and the next good answer)."""
        return not self._down

    def worth_trying(self) -> bool:
        """Up, or down with its back-off over (the next call probes whether it is back)."""
        return not self._down or (not self._probing and time.monotonic() >= self._next_try)

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self._pool.disconnect)

    # -- keys --------------------------------------------------------------------------------
    def block_key(self, provider: str, key: str, version: str, index: int) -> str:
        return f"{self._p}:blk:{_name(provider)}:{_digest(key, version)}:b{self.block_size}:{index}"

    def _lease_key(self, block_key: str) -> str:
        return block_key.replace(":blk:", ":lease:", 1)

    def _once_keys(self, key: str) -> tuple[str, str]:
        d = _digest(key)
        return f"{self._p}:once:{d}", f"{self._p}:once:{d}:busy"

    def _whole_key(self, key: str) -> str:
        return f"{self._p}:whole:{_digest(key)}"

    def _window_key(self, name: str) -> str:
        return f"{self._p}:win:{_digest(name)}"

    def _token_key(self, name: str) -> str:
        return f"{self._p}:tok:{_digest(name)}"

    # -- calling Redis -----------------------------------------------------------------------
    def _bound(self, nbytes: int = 0) -> float:
        """The longest a call may take: connect + answer, twice (one retry), plus the transfer
        at a pessimistic 8 MiB/s."""
        c = self.config
        return 2 * (c.connect_timeout + c.op_timeout) + 0.25 + nbytes / (8 << 20)

    def _may_try(self) -> bool | None:
        """False: do not call (down, backing off); True: call, as the probe; None: call."""
        if not self._down:
            return None
        if self._probing or time.monotonic() < self._next_try:
            return False
        self._probing = True  # this call finds out whether Redis is back; the others wait
        return True

    def _scrub(self, text: str) -> str:
        for s in (self.config.password, self.config.username):
            if s:
                text = text.replace(s, "<hidden>")
        return text

    def _failed(self, exc: BaseException, probe: bool) -> None:
        if probe:  # still down: wait longer before the next attempt
            self._probing = False
            self._backoff = min(self._backoff * 2, self.config.retry_max)
            self._next_try = time.monotonic() + self._backoff
            return
        if self._down:
            return
        self._down = True
        self._backoff = self.config.retry_after
        self._next_try = time.monotonic() + self._backoff
        self.stats.outages += 1
        log.warning(
            "fleet tier unavailable (%s); falling back to the cloud, retrying in %.3g s",
            self._scrub(f"{type(exc).__name__}: {exc}"),
            self.config.retry_after,
        )

    def _answered(self) -> None:
        self._probing = False
        if self._down:
            self._down = False
            self._backoff = self.config.retry_after
            log.info("fleet tier is back")

    def _refused(self, exc: redis.RedisError) -> None:
        """Redis answered with an error (OOM, NOPERM, ...): this call fails, the tier stays up."""
        code = str(exc).split(" ", 1)[0][:32] or type(exc).__name__
        with self._lock:
            first = code not in self._refusals
            self._refusals.add(code)
        (log.warning if first else log.debug)(
            "fleet tier: Redis refused a command (%s)", self._scrub(f"{type(exc).__name__}: {exc}")
        )

    async def _run(self, fn: Callable[[], T], nbytes: int = 0) -> T:
        """``fn`` (redis-py calls) in a worker thread, bounded. Raises _Unavailable (logged)."""
        with trio.move_on_after(self._bound(nbytes)) as queued:
            await self._limiter.acquire()
        if queued.cancelled_caught:  # the calls ahead of this one hold every connection
            self.stats.unavailable += 1
            raise _Unavailable
        try:
            return await self._run_holding(fn, nbytes)
        finally:
            self._limiter.release()

    async def _run_holding(self, fn: Callable[[], T], nbytes: int) -> T:
        """``fn`` with a connection slot held: bounded, errors turned into _Unavailable."""
        probe = self._may_try()
        if probe is False:
            self.stats.unavailable += 1
            raise _Unavailable
        with trio.move_on_after(self._bound(nbytes)) as scope:
            try:
                result = await trio.to_thread.run_sync(
                    fn, abandon_on_cancel=True, limiter=self._threads
                )
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                self._failed(exc, bool(probe))
                self.stats.unavailable += 1
                raise _Unavailable from None
            except redis.RedisError as exc:
                self._answered()  # it answered, with an error
                self._refused(exc)
                self.stats.unavailable += 1
                raise _Unavailable from None
            except BaseException:
                if probe:
                    self._probing = False
                raise
        if scope.cancelled_caught:
            bound = self._bound(nbytes)
            self._failed(TimeoutError(f"no answer within {bound:.3g} s"), bool(probe))
            self.stats.unavailable += 1
            raise _Unavailable
        self._answered()
        return result

    async def _compare(self, script: str, key: str, *args: str) -> int:
        """Run a compare-and-* script on one key; 0 when unavailable."""
        s = self._scripts[script]
        try:
            return int(await self._run(lambda: s(keys=[key], args=list(args))))
        except _Unavailable:
            return 0

    def _read_sync(self, key: str, what: str, ttl: float | None = None) -> bytes | None:
        """In a worker thread: a packed value, verified (a corrupt one is deleted, not returned)."""
        raw = self._r.getex(key, px=int(ttl * 1000)) if ttl is not None else self._r.get(key)
        if raw is None:
            return None
        return self._verified(key, cast(bytes, raw), what)

    def _verified(self, key: str, raw: bytes, what: str) -> bytes | None:
        data, why = unpack(raw)
        if data is None:
            self._r.delete(key)  # (a good value written since is lost too: it is fetched again)
            with self._lock:
                self.stats.corrupt += 1
            log.warning("fleet tier: dropped a corrupt %s (%s): %s", what, why, key)
        return data

    async def ping(self) -> bool:
        """Whether Redis answers; warns once about a memory policy that could evict one-shot
        claims (docs/fleet.md)."""

        def check() -> str:
            self._r.ping()
            try:
                info = self._r.info("memory")
            except redis.exceptions.NoPermissionError:  # an ACL user without INFO: no check
                return ""
            return str(info.get("maxmemory_policy", ""))

        try:
            policy = await self._run(check)
        except _Unavailable:
            return False
        if policy.startswith("allkeys") and not self._policy_warned:
            self._policy_warned = True
            log.warning(
                "fleet tier: Redis maxmemory-policy is %s, which may evict one-shot claims; "
                "use volatile-lru (docs/fleet.md)",
                policy,
            )
        return True

    # -- blocks ------------------------------------------------------------------------------
    async def get_block(self, provider: str, key: str, version: str, index: int) -> bytes | None:
        """The block from the tier, verified; None if absent, corrupt or the tier unavailable."""
        k = self.block_key(provider, key, version, index)
        try:
            data = await self._run(
                lambda: self._read_sync(k, "block", self.config.block_ttl), self.block_size
            )
        except _Unavailable:
            return None
        if data is None:
            self.stats.misses += 1
        else:
            self.stats.hits += 1
        return data

    async def put_block(
        self, provider: str, key: str, version: str, index: int, data: bytes
    ) -> bool:
        """Publish a downloaded block (complete: the whole block, or the object's last one)."""
        return await self._put_block(self.block_key(provider, key, version, index), data)

    async def _put_block(self, k: str, data: bytes) -> bool:
        if len(data) > min(self.block_size, self.config.max_value_bytes):
            return False
        value = pack(data)
        px = int(self.config.block_ttl * 1000)
        try:
            await self._run(lambda: self._r.set(k, value, px=px), len(value))
        except _Unavailable:
            return False
        self.stats.published += 1
        return True

    async def lease_block(self, provider: str, key: str, version: str, index: int) -> Lease | None:
        """The download lease of a block if no host holds it (SET NX PX); None if another host
        does or the tier is unavailable. :meth:`fetch_block` is the whole protocol."""
        k = self.block_key(provider, key, version, index)
        lk, token = self._lease_key(k), self._token()
        px = int(self.config.lease_seconds * 1000)
        try:
            won = await self._run(lambda: self._r.set(lk, token, nx=True, px=px))
        except _Unavailable:
            return None
        return self._block_lease(k, token) if won else None

    def _token(self) -> str:
        return f"{self.config.host_id}/{secrets.token_hex(8)}"

    def _block_lease(self, k: str, token: str) -> Lease:
        return Lease(self, self._lease_key(k), token, lambda data: self._put_block(k, data))

    async def fetch_block(
        self, provider: str, key: str, version: str, index: int, *, wait: float | None = None
    ) -> Fetch:
        """Look a block up, single-flighted across the fleet: the block (``data``), or the lease
        to download it (``lease``), or neither (go to the cloud). While another host holds the
        lease, wait for its block up to ``wait`` (default ``lease_wait``) by polling; if its
        lease ends without a block (it failed or died), take the lease over."""
        k = self.block_key(provider, key, version, index)
        lk = self._lease_key(k)
        token = self._token()
        c = self.config
        args = [token, str(int(c.lease_seconds * 1000)), str(int(c.block_ttl * 1000))]
        take = self._scripts[_TAKE]
        start = trio.current_time()
        deadline = start + (c.lease_wait if wait is None else wait)
        pause = self._POLL_FIRST

        def attempt() -> tuple[int, bytes | None]:
            res = cast(list[Any], take(keys=[k, lk], args=args))
            if res[0] == 1:
                return 1, self._verified(k, cast(bytes, res[1]), "block")
            return int(res[0]), None

        while True:
            try:
                state, data = await self._run(attempt, self.block_size)
            except _Unavailable:
                return Fetch(waited=trio.current_time() - start)
            now = trio.current_time()
            if state == 1 and data is not None:
                self.stats.hits += 1
                return Fetch(data=data, waited=now - start)
            if state == 2:
                self.stats.misses += 1
                return Fetch(lease=self._block_lease(k, token), waited=now - start)
            if now >= deadline:
                self.stats.misses += 1
                return Fetch(waited=now - start)
            if state == 0:  # another host holds the lease (state 1: it was corrupt, now gone)
                await trio.sleep(min(pause, deadline - now))
                pause = min(pause * 1.5, self._POLL_MAX)

    # -- the fleet's download window ---------------------------------------------------------
    async def acquire_window(self, name: str, interval: float) -> float | None:
        """Wait for this host's turn in a fleet-wide window of one download per ``interval``
        seconds (IoTDA: per user), and return the seconds waited; the download may start
        then. None: the tier is unavailable (rely on the local window and the cloud's answer).

        Two steps, both in Redis' clock: a turn is reserved at once, in the order asked (no
        polling; a waiter cancelled before its turn gives it back if no later one was given);
        at its turn the host records its start in a "last start" key, atomically, only if
        ``interval`` has passed since the last one (else it waits the rest). So the starts
        Redis records are ``interval`` apart even when a host resumes late."""
        wk = self._window_key(name)
        lk = wk + ":last"
        ms = max(1, int(interval * 1000))
        reserve, go = self._scripts[_WINDOW], self._scripts[_GO]
        start = trio.current_time()
        try:
            res = await self._run(lambda: cast(list[Any], reserve(keys=[wk], args=[ms])))
        except _Unavailable:
            return None
        wait_ms = int(res[0])
        slot = res[1].decode() if isinstance(res[1], bytes) else str(res[1])
        try:
            if wait_ms > 0:
                await trio.sleep(wait_ms / 1000)
        except trio.Cancelled:
            give = self._scripts[_GIVE_BACK]
            with trio.CancelScope(shield=True):
                try:
                    await self._run(lambda: give(keys=[wk], args=[slot, ms]))
                except _Unavailable:
                    pass
            raise
        while True:
            try:
                more = int(await self._run(lambda: go(keys=[lk], args=[ms])))
            except _Unavailable:
                return None
            if more <= 0:
                return trio.current_time() - start
            await trio.sleep(more / 1000)

    # -- one-shot downloads and whole objects -------------------------------------------------
    async def claim_once(self, key: str) -> bool | None:
        """Record that this host consumes a one-shot download (ROMA), before it starts: True
        for exactly one host of the fleet (which downloads it and then :meth:`publish_whole`),
        False for the others (:meth:`wait_whole`). None: the tier is unavailable. The claim
        never expires; an "in progress" mark does, after ``lease_seconds`` unless refreshed
        (:meth:`refresh_claim`), so waiters learn soon when the winner died."""
        ck, bk = self._once_keys(key)
        value = f"{self.config.host_id} {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
        px = str(int(self.config.lease_seconds * 1000))
        s = self._scripts[_CLAIM]
        try:
            return bool(await self._run(lambda: s(keys=[ck, bk], args=[value, px])))
        except _Unavailable:
            return None

    async def refresh_claim(self, key: str) -> bool:
        """Keep the "in progress" mark of a claim for another ``lease_seconds``."""
        _, bk = self._once_keys(key)
        px = int(self.config.lease_seconds * 1000)
        try:
            return bool(await self._run(lambda: self._r.pexpire(bk, px)))
        except _Unavailable:
            return False

    async def release_claim(self, key: str) -> bool:
        """Forget a claim: only when the cloud is known not to have consumed the download (it
        refused before sending anything); another host may then claim it."""
        ck, bk = self._once_keys(key)
        try:
            await self._run(lambda: self._r.delete(ck, bk))
        except _Unavailable:
            return False
        return True

    async def publish_whole(self, key: str, data: bytes) -> bool:
        """Publish a complete download (a ROMA archive, an IoTDA export): the parts first, then
        the manifest in one atomic step; a reader sees all of it or nothing. True if it is
        published (by this host or, first, by another)."""
        c = self.config
        if len(data) > c.max_whole_bytes:
            log.warning(
                "fleet tier: not publishing %d bytes (max_whole_bytes %d)",
                len(data),
                c.max_whole_bytes,
            )
            return False
        mk = self._whole_key(key)
        _, bk = self._once_keys(key)
        upload = secrets.token_hex(8)
        view = memoryview(data)
        n = (len(data) + c.part_bytes - 1) // c.part_bytes
        parts = [f"{mk}:{upload}:{i}" for i in range(n)]
        staging = int(c.staging_ttl * 1000)
        try:
            for i, pk in enumerate(parts):
                value = pack(view[i * c.part_bytes : (i + 1) * c.part_bytes])
                await self._run(self._setter(pk, value, staging), len(value))
            manifest = pack(
                json.dumps(
                    {"upload": upload, "parts": n, "length": len(data), "crc32": zlib.crc32(data)}
                ).encode()
            )
            ttl = str(int(c.whole_ttl * 1000)) if c.whole_ttl else "0"
            flip = self._scripts[_FLIP]
            res = int(await self._run(lambda: flip(keys=[mk, bk, *parts], args=[manifest, ttl])))
        except _Unavailable:
            return False  # the parts written expire (staging_ttl)
        if res == 1:
            self.stats.published += 1
            return True
        if parts:
            try:
                await self._run(lambda: self._r.delete(*parts))
            except _Unavailable:
                pass
        if res == -1:
            log.warning("fleet tier: a part was evicted before the archive was complete: %s", mk)
            return False
        return True  # another host published it first

    def _setter(self, key: str, value: bytes, px: int) -> Callable[[], object]:
        return lambda: self._r.set(key, value, px=px)

    async def read_whole(self, key: str) -> bytes | None:
        """A published whole object, verified; None if there is none (or it was corrupt: then
        it is deleted) or the tier is unavailable."""
        mk = self._whole_key(key)
        try:
            man = await self._run(lambda: self._read_sync(mk, "manifest"))
            if man is None:
                return None
            try:
                m = json.loads(man)
                upload, n, length, crc = (
                    str(m["upload"]),
                    int(m["parts"]),
                    int(m["length"]),
                    int(m["crc32"]),
                )
            except (ValueError, KeyError, TypeError):
                n = length = -1
            if not (0 <= length <= self.config.max_whole_bytes and 0 <= n <= length + 1):
                await self._run(lambda: self._drop_whole(mk, [], "manifest unreadable"))
                return None
            parts = [f"{mk}:{upload}:{i}" for i in range(n)]
            return await self._run(lambda: self._read_parts(mk, parts, length, crc), length)
        except _Unavailable:
            return None

    def _read_parts(self, mk: str, parts: list[str], length: int, crc: int) -> bytes | None:
        chunks: list[bytes] = []
        for pk in parts:
            raw = cast(bytes | None, self._r.get(pk))
            if raw is None:
                return self._drop_whole(mk, parts, "a part is missing")
            data, why = unpack(raw)
            if data is None:
                return self._drop_whole(mk, parts, f"a part is corrupt: {why}")
            chunks.append(data)
        out = b"".join(chunks)
        if len(out) != length or zlib.crc32(out) != crc:
            return self._drop_whole(mk, parts, "length or CRC differs from the manifest")
        return out

    def _drop_whole(self, mk: str, parts: list[str], why: str) -> bytes | None:
        self._r.delete(mk, *parts)
        with self._lock:
            self.stats.corrupt += 1
        log.warning("fleet tier: dropped a corrupt archive (%s): %s", why, mk)
        return None

    async def has_whole(self, key: str) -> bool:
        """A complete copy of ``key`` is published (its manifest exists); False if unavailable."""
        mk = self._whole_key(key)
        try:
            return bool(await self._run(lambda: self._r.exists(mk)))
        except _Unavailable:
            return False

    async def put_entries(self, folder: str, items: Mapping[str, str]) -> bool:
        """Record listing entries (id -> JSON) of a folder; kept, like one-shot claims."""
        k = f"{self._p}:ent:{_digest(folder)}"
        try:
            await self._run(lambda: self._r.hset(k, mapping=cast(Any, dict(items))))
        except _Unavailable:
            return False
        return True

    async def get_entries(self, folder: str) -> dict[str, str]:
        k = f"{self._p}:ent:{_digest(folder)}"
        try:
            raw = await self._run(lambda: cast(dict[bytes, bytes], self._r.hgetall(k)))
        except _Unavailable:
            return {}
        return {a.decode("utf-8", "replace"): b.decode("utf-8", "replace") for a, b in raw.items()}

    async def wait_whole(self, key: str, timeout: float | None = None) -> bytes | None:
        """After losing :meth:`claim_once`: the archive once the winner has published it.
        Raises :class:`NotPublished` when the winner stopped without publishing, or did not
        publish within ``timeout`` (default ``lease_wait``). None: the tier is unavailable, or
        no host holds a claim any more (try the cloud)."""
        ck, bk = self._once_keys(key)
        mk = self._whole_key(key)
        limit = self.config.lease_wait if timeout is None else timeout
        start = trio.current_time()
        pause = self._POLL_FIRST

        def look() -> list[int]:
            pipe = self._r.pipeline(transaction=False)
            pipe.exists(mk)
            pipe.exists(bk)
            pipe.exists(ck)
            return [int(x) for x in pipe.execute()]

        while True:
            try:
                published, busy, claimed = await self._run(look)
            except _Unavailable:
                return None
            if published:
                data = await self.read_whole(key)
                if data is not None or not self.available:
                    return data
                raise NotPublished(
                    f"{key}: downloaded by another host, whose published copy was corrupt"
                )
            if not claimed:
                return None
            if not busy:
                raise NotPublished(f"{key}: downloaded by another host that did not publish it")
            now = trio.current_time()
            if now - start >= limit:
                raise NotPublished(
                    f"{key}: downloaded by another host that has not published it "
                    f"within {limit:.3g} s"
                )
            await trio.sleep(min(pause, start + limit - now))
            pause = min(pause * 1.5, 0.5)

    # -- tokens (opt-in) ---------------------------------------------------------------------
    async def shared_token(self, name: str) -> str | None:
        """A provider token another host published (``share_tokens`` only); never logged."""
        if not self.config.share_tokens:
            return None
        tk = self._token_key(name)
        try:
            data = await self._run(lambda: self._read_sync(tk, "token"))
        except _Unavailable:
            return None
        return None if data is None else data.decode("utf-8", "replace")

    async def publish_token(self, name: str, token: str, ttl: float) -> bool:
        """Share a token for ``ttl`` seconds (less than its own lifetime; ``share_tokens``)."""
        if not self.config.share_tokens or ttl <= 0:
            return False
        tk, value, px = self._token_key(name), pack(token.encode()), max(1, int(ttl * 1000))
        try:
            await self._run(lambda: self._r.set(tk, value, px=px))
        except _Unavailable:
            return False
        return True


# -- the block cache's view (fusefs.cache.tier.BlockTier) -----------------------------------------
class CacheTier:
    """:class:`fusefs.cache.tier.BlockTier` over a :class:`FleetTier`: what the block cache
    calls before the cloud, and the fleet-wide IoTDA window (``window``) for the providers.

    ``publish``/``release`` come from any thread (the receiving threads publish full blocks):
    they hand the work to tasks of :meth:`run`'s nursery and never block; past
    ``max_pending`` bytes of publishes in flight a block is not shared (counted in
    ``dropped``, logged once): a Redis slower than the cloud never slows a download."""

    def __init__(self, tier: FleetTier, *, max_pending: int = 64 << 20) -> None:
        self.tier = tier
        self.max_pending = max_pending
        self.dropped = 0  # blocks not shared: too many bytes waiting to be published
        self._pending = 0  # bytes
        self._lock = threading.Lock()  # _leases, _pending: touched from threads
        self._leases: dict[BlockId, Lease] = {}
        self._whole_leases: dict[WholeId, Lease] = {}
        self._claimed: set[WholeId] = set()  # one-shot claims this host won
        self._ready: dict[BlockId, bytes] = {}  # found by ``lease``, taken by ``wait``
        self._one_shot: dict[WholeId, bool] = {}
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the publishing tasks until cancelled (the mount's lifetime)."""
        self._token = trio.lowlevel.current_trio_token()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    @property
    def token_share(self) -> FleetTokens | None:
        """The providers' shared tokens (``[fleet] share_tokens``), else None."""
        return FleetTokens(self.tier) if self.tier.config.share_tokens else None

    def _soon(
        self,
        fn: Callable[..., Awaitable[object]],
        *args: object,
        dropped: Callable[[], None] | None = None,
    ) -> bool:
        """From any thread: run ``fn(*args)`` as a task of :meth:`run`'s nursery. False when no
        longer running; a task that cannot start any more (the nursery closed meanwhile, at
        unmount) calls ``dropped`` on the loop instead."""
        token = self._token
        if token is None or self._nursery is None:
            return False

        def start() -> None:  # on the loop: the nursery as it is now
            nursery = self._nursery
            try:
                if nursery is None:
                    raise RuntimeError("closed")
                nursery.start_soon(fn, *args)
            except RuntimeError:
                if dropped is not None:
                    dropped()

        try:
            token.run_sync_soon(start)
        except trio.RunFinishedError:
            return False
        return True

    @staticmethod
    def _whole_key(obj: WholeId) -> str:
        return f"{obj.provider}\0{obj.key}\0{obj.version}"

    # -- blocks ----------------------------------------------------------------------------------
    def usable(self) -> bool:
        # while down, true again once the back-off is over: that fetch's call is the probe
        return self._nursery is not None and self.tier.worth_trying()

    async def get(self, block: BlockId, length: int) -> bytes | None:
        data = self._ready.pop(block, None)
        if data is None:
            b = block
            data = await self.tier.get_block(b.provider, b.key, b.version, b.index)
        return data if data is not None and len(data) == length else None

    async def lease(self, block: BlockId) -> bool:
        # one atomic step: the block if it was published meanwhile, else the lease if free
        b = block
        got = await self.tier.fetch_block(b.provider, b.key, b.version, b.index, wait=0)
        if got.data is not None:
            while len(self._ready) >= 8:  # a run that stopped here never asks: bounded
                self._ready.pop(next(iter(self._ready)))
            self._ready[block] = got.data  # ``get``/``wait`` answer it at once
            return False
        if got.lease is None:
            return not self.tier.available  # held elsewhere; or the tier is down: fetch here
        with self._lock:
            self._leases[block] = got.lease
        return True

    async def wait(self, block: BlockId, length: int) -> bytes | None:
        ready = self._ready.pop(block, None)
        if ready is not None:
            return ready if len(ready) == length else None
        got = await self.tier.fetch_block(block.provider, block.key, block.version, block.index)
        if got.lease is not None:  # the other host gave up: this one downloads and publishes
            with self._lock:
                self._leases[block] = got.lease
        data = got.data
        return data if data is not None and len(data) == length else None

    def publish(self, block: BlockId, data: bytes | bytearray) -> None:
        with self._lock:
            lease = self._leases.pop(block, None)
            if self._pending + len(data) > self.max_pending:
                self.dropped += 1
                if self.dropped == 1:
                    log.warning(
                        "fleet tier: Redis is slower than the downloads; some blocks are not shared"
                    )
                if lease is not None:
                    self._soon(lease.release)
                return
            self._pending += len(data)
        n = len(data)

        def dropped() -> None:
            with self._lock:
                self._pending -= n

        if not self._soon(self._publish, block, bytes(data), lease, dropped=dropped):
            dropped()

    async def _publish(self, block: BlockId, data: bytes, lease: Lease | None) -> None:
        try:
            if lease is not None:
                await lease.publish(data)
            else:
                await self.tier.put_block(
                    block.provider, block.key, block.version, block.index, data
                )
        finally:
            with self._lock:
                self._pending -= len(data)

    def release(self, block: BlockId) -> None:
        with self._lock:
            lease = self._leases.pop(block, None)
        if lease is not None:
            self._soon(lease.release)

    # -- whole objects ---------------------------------------------------------------------------
    async def get_whole(self, obj: WholeId) -> bytes | None:
        return await self.tier.read_whole(self._whole_key(obj))

    async def claim_whole(self, obj: WholeId, *, one_shot: bool) -> bool:
        self._one_shot[obj] = one_shot
        if obj in self._claimed:
            return True  # this host's claim: it may try again (a failure before any byte)
        if one_shot:
            won = await self.tier.claim_once(self._whole_key(obj))
            if won is None:  # the tier is down: as on one host
                return True
            if won:
                self._claimed.add(obj)
            return won
        lease = await self.tier.lease_block(obj.provider, obj.key, obj.version, -1)
        if lease is None:
            return not self.tier.available
        self._whole_leases[obj] = lease
        return True

    def holds_whole(self, obj: WholeId) -> bool:
        return obj in self._whole_leases or obj in self._claimed

    @property
    def max_whole_bytes(self) -> int:
        return self.tier.config.max_whole_bytes

    async def wait_whole(self, obj: WholeId) -> bytes | None:
        key = self._whole_key(obj)
        if self._one_shot.get(obj, False):
            try:
                return await self.tier.wait_whole(key)
            except NotPublished as exc:
                log.warning("fleet tier: %s", exc)
                return None
        # an export another host is downloading: its copy, or the lease once it gave up
        deadline = trio.current_time() + self.tier.config.lease_wait
        pause = 0.05
        while trio.current_time() < deadline and self.tier.available:
            data = await self.tier.read_whole(key)
            if data is not None:
                return data
            lease = await self.tier.lease_block(obj.provider, obj.key, obj.version, -1)
            if lease is not None:
                self._whole_leases[obj] = lease
                return None
            await trio.sleep(pause)
            pause = min(pause * 1.5, 0.5)
        return None

    async def has_whole(self, obj: WholeId) -> bool:
        return await self.tier.has_whole(self._whole_key(obj))

    async def share_entries(self, provider: str, folder: str, entries: list[RemoteEntry]) -> None:
        items = {e.remote_id: json.dumps({**asdict(e), "kind": e.kind.value}) for e in entries}
        if items:
            await self.tier.put_entries(f"{provider}\0{folder}", items)

    async def shared_entries(self, provider: str, folder: str) -> list[RemoteEntry]:
        out = []
        for raw in (await self.tier.get_entries(f"{provider}\0{folder}")).values():
            try:
                d = json.loads(raw)
                out.append(RemoteEntry(**{**d, "kind": EntryKind(d["kind"])}))
            except (ValueError, TypeError, KeyError):
                log.warning("fleet tier: a shared entry of %s is not readable; skipped", provider)
        return out

    async def publish_whole(self, obj: WholeId, data: bytes) -> None:
        try:
            await self.tier.publish_whole(self._whole_key(obj), data)
        finally:
            await self.release_whole(obj)

    async def release_whole(self, obj: WholeId) -> None:
        lease = self._whole_leases.pop(obj, None)
        if lease is not None:
            await lease.release()

    # -- the providers' download window ---------------------------------------------------------
    async def window(self, name: str, interval: float) -> None:
        """Wait for this host's turn in the fleet-wide window ``name`` (IoTDA: per user). The
        margin covers the hosts' clocks and the time a download takes to reach the service."""
        waited = await self.tier.acquire_window(name, interval + 0.5)
        if waited is not None and waited > 0.05:
            log.debug("fleet window %s: waited %.1fs for this host's turn", name, waited)


class FleetTokens:
    """``providers._auth.TokenShare`` over a :class:`FleetTier` (``[fleet] share_tokens``)."""

    def __init__(self, tier: FleetTier) -> None:
        self.tier = tier

    async def get(self, name: str) -> str | None:
        return await self.tier.shared_token(name)

    async def put(self, name: str, value: str, ttl: float) -> None:
        await self.tier.publish_token(name, value, ttl)
