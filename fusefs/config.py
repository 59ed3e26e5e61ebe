"""The mount configuration: a TOML file (docs/configuration.md) → frozen dataclasses.

Here: the generic parts (``[mount]``, ``[cache]``, ``[http]``, secrets, sizes, file loading) and
:class:`Section`, the reader every section parser uses. Each provider module parses its own
section (its ``SPEC``); ``fusefs.providers.registry.load_config`` puts the two together.

Every mistake raises :class:`ConfigError` with one line that names the key and says what to fix.
Secrets never appear in the file: they come from an environment variable (``<name>_env``) or a file
(``<name>_file``, mode 0600 or stricter) and are held in :class:`Secret`, whose repr hides them.
"""

from __future__ import annotations

import logging
import math
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class ConfigError(ValueError):
    """The configuration cannot be used; the message says what to fix."""


class Secret:
    """A secret string. ``repr``/``str`` never show it; ``reveal()`` does."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str = "") -> None:
        self._value = value
        self.source = source  # where it came from ("env FOO", "file /x"), safe to log

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(<hidden>{', from ' + self.source if self.source else ''})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))


@dataclass(frozen=True, slots=True)
class MountOptions:
    request_timeout: float = 60.0
    dir_ttl: float = 60.0
    log_level: str = "info"
    # user.fusefs.* attributes (opt-in): on, `ls -l` asks the daemon twice per entry;
    # the same state is always available through `fusefs info`
    xattrs: bool = False
    # who may use the mount (-o allow_other) and what it shows (-o uid=,gid=,file_mode=,dir_mode=)
    allow_other: bool = False
    default_permissions: bool | None = None  # None: the same as allow_other
    uid: int | None = None  # None: the mounting user's
    gid: int | None = None
    file_mode: int = 0o444
    dir_mode: int = 0o555
    log_file: Path | None = None  # None: stderr (foreground) or the per-mount file (background)


@dataclass(frozen=True, slots=True)
class CacheConfig:
    dir: Path = field(default_factory=lambda: Path("~/.cache/fusefs").expanduser())
    block_size: int = 1 << 20
    max_size: int = 10 << 30
    min_free_ratio: float = 0.05
    memory_budget: int = 256 << 20


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """How fusefs reaches the clouds (API calls and object bodies alike)."""

    ca_bundle: Path | None = None  # PEM file of CAs to trust instead of the system store
    proxy: str | None = None  # http(s)://host:port; default: HTTPS_PROXY/HTTP_PROXY/NO_PROXY
    connect_timeout: float = 10.0
    read_timeout: float = 30.0  # per receive, and for the head of every answer


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """The Prometheus endpoint (``[metrics]``): off unless an address is given."""

    address: tuple[str, int] | None = None  # (host, port)


@dataclass(frozen=True, slots=True)
class FleetSettings:
    """The tier shared by a fleet of hosts (``[fleet]``, docs/fleet.md); absent: one host."""

    url: str  # redis://host:port/db or rediss:// (TLS); never with credentials in it
    key_prefix: str = "fusefs"
    username: Secret | None = None
    password: Secret | None = None
    tls_ca_file: Path | None = None
    lease_seconds: float = 30.0  # a download lease lives this long unless refreshed
    lease_wait: float = 30.0  # how long a host waits for another host's download
    block_ttl: float = 7 * 86400.0  # shared blocks expire (and may be evicted) after this
    share_tokens: bool = False  # hosts share provider tokens through the tier (opt-in)


@dataclass(frozen=True, slots=True)
class MountConfig:
    mount: MountOptions = field(default_factory=MountOptions)
    cache: CacheConfig = field(default_factory=CacheConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    fleet: FleetSettings | None = None
    #: every registered section by name, in registry order: its parsed config, None if absent
    sections: Mapping[str, object | None] = field(default_factory=dict)
    path: Path | None = None  # the file it was loaded from

    def __getattr__(self, name: str) -> Any:
        """``cfg.enos``: a registered section's config (``None`` when the file has none)."""
        try:
            sections = object.__getattribute__(self, "sections")
        except AttributeError:
            raise AttributeError(name) from None
        if name in sections:
            return sections[name]
        raise AttributeError(f"MountConfig has no section {name!r}")

    def with_section(self, name: str, value: object) -> MountConfig:
        """A copy with one section replaced (tests, the demo)."""
        return replace(self, sections={**self.sections, name: value})


@dataclass(frozen=True, slots=True)
class SectionSpec:
    """A section a provider module owns (``[enos]``) or shares with others (``[iam]``)."""

    name: str
    parse: Callable[[Section], object]
    #: for a shared section: what a section that needs it lacks, and the keys to write, as in
    #: "[iotda] needs IAM credentials: add an [iam] section (url, user, ...)"
    what: str = ""
    keys_hint: str = ""


# ---- parsing helpers ---------------------------------------------------------------------------

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT](?:i?B)?|B)?\s*$", re.IGNORECASE)
# as rclone, gcsfuse and `df -h` read them: a bare K/M/G/T and KiB... are powers of 1024,
# KB/MB/GB/TB powers of 1000
_UNITS = {
    "b": 1,
    "k": 1 << 10,
    "m": 1 << 20,
    "g": 1 << 30,
    "t": 1 << 40,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
}


class Section:
    """One TOML table being read: tracks used keys, formats errors as ``[name] key: ...``."""

    def __init__(self, name: str, data: object, env: Mapping[str, str], base: Path) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"[{name}] must be a table, got {tname(data)}")
        self.name = name
        self.data: dict[str, Any] = data
        self.env = env
        self.base = base
        self.used: set[str] = set()

    def err(self, key: str, msg: str) -> ConfigError:
        return ConfigError(f"[{self.name}] {key}: {msg}")

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str) -> Any:
        self.used.add(key)
        return self.data.get(key)

    def str_(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        if key not in self.data:
            if required:
                raise self.err(key, f'missing; add {key} = "..."')
            return default
        v = self.raw(key)
        if not isinstance(v, str):
            raise self.err(key, f"must be a string, got {tname(v)}")
        if not v.strip():
            raise self.err(key, "must not be empty")
        return v

    def req_str(self, key: str) -> str:
        v = self.str_(key, required=True)
        assert v is not None
        return v

    def float_(self, key: str, default: float, *, positive: bool = True) -> float:
        if key not in self.data:
            return default
        v = self.raw(key)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self.err(key, f"must be a number, got {tname(v)}")
        if not math.isfinite(v) or (positive and v <= 0):
            raise self.err(key, f"must be a number > 0, got {v!r}")
        return float(v)

    def bool_(self, key: str, default: bool) -> bool:
        if key not in self.data:
            return default
        v = self.raw(key)
        if not isinstance(v, bool):
            raise self.err(key, f"must be true or false, got {tname(v)}")
        return v

    def size(self, key: str, default: int) -> int:
        if key not in self.data:
            return default
        v = self.raw(key)
        if isinstance(v, bool):
            raise self.err(key, f'must be a size (bytes, or a string like "1MiB"), got {v!r}')
        if isinstance(v, int):
            n = v
        elif isinstance(v, str):
            m = _SIZE_RE.match(v)
            if m is None:
                raise self.err(
                    key,
                    f'cannot read size {v!r}; write bytes or e.g. "512KiB", "1MiB", "20G", "10GB"',
                )
            n = int(float(m.group(1)) * _UNITS[(m.group(2) or "B").lower()])
        else:
            raise self.err(key, f'must be a size (bytes, or a string like "1MiB"), got {tname(v)}')
        if n <= 0:
            raise self.err(key, f"must be > 0, got {v!r}")
        return n

    def url(self, key: str, default: str | None = None) -> str:
        v = self.str_(key, default, required=default is None)
        assert v is not None
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise self.err(key, f'{v!r} is not an http(s) URL; write e.g. "https://host"')
        if parts.query or parts.fragment:
            raise self.err(key, f"{v!r} must not have a query or fragment")
        return v.rstrip("/")

    def str_list(self, key: str, *, required: bool = True) -> tuple[str, ...]:
        if key not in self.data:
            if required:
                raise self.err(key, f'missing; add {key} = ["..."]')
            return ()
        v = self.raw(key)
        if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
            raise self.err(key, f"must be a list of non-empty strings, got {tname(v)}")
        if required and not v:
            raise self.err(key, "must name at least one")
        if len(set(v)) != len(v):
            raise self.err(key, "has duplicates")
        return tuple(v)

    def plain_or_env(self, key: str) -> str:
        """A non-secret value given inline (``key``) or from the environment (``key_env``)."""
        if self.has(key) and self.has(f"{key}_env"):
            raise self.err(key, f"give either {key} or {key}_env, not both")
        if self.has(f"{key}_env"):
            var = self.str_(f"{key}_env")
            assert var is not None
            val = self.env.get(var)
            if not val:
                raise self.err(key, f"environment variable {var} is not set; set {var} or {key}")
            return val
        if self.has(key):
            return self.req_str(key)
        raise self.err(key, f'missing; add {key} = "..." or {key}_env = "ENV_VAR"')

    def secret(self, key: str) -> Secret:
        """A secret from ``key_env`` (an env var name) or ``key_file`` (a path, mode 0600)."""
        if self.has(key):
            self.used.add(key)
            raise self.err(
                key,
                f'secrets are not written into the config; use {key}_env = "ENV_VAR" '
                f'or {key}_file = "PATH"',
            )
        env_key, file_key = f"{key}_env", f"{key}_file"
        if self.has(env_key) and self.has(file_key):
            raise self.err(key, f"give either {env_key} or {file_key}, not both")
        if self.has(env_key):
            var = self.str_(env_key)
            assert var is not None
            val = self.env.get(var)
            if not val:
                raise self.err(
                    key, f"environment variable {var} is not set; set {var} or {file_key}"
                )
            return Secret(val, f"env {var}")
        if self.has(file_key):
            raw = self.str_(file_key)
            assert raw is not None
            path = Path(os.path.expanduser(raw))
            if not path.is_absolute():
                path = self.base / path
            try:
                st = path.stat()
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise self.err(
                    file_key, f"cannot read {path}: {exc.strerror or exc}; fix the path"
                ) from None
            if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                log.warning(
                    "secret file %s is accessible by group/others (mode %o); run chmod 600 %s",
                    path,
                    stat.S_IMODE(st.st_mode),
                    path,
                )
            val = text.strip("\r\n")
            if not val:
                raise self.err(file_key, f"{path} is empty")
            return Secret(val, f"file {path}")
        raise self.err(key, f'missing; add {env_key} = "ENV_VAR" or {file_key} = "PATH"')


def tname(v: object) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "a list",
        dict: "a table",
    }.get(type(v), type(v).__name__)


def known(section: Section, keys: set[str]) -> None:
    """Reject keys outside ``keys`` (the message lists the known ones)."""
    unknown = sorted(set(section.data) - keys)
    if unknown:
        raise ConfigError(
            f"[{section.name}] unknown key {unknown[0]!r} (known keys: {', '.join(sorted(keys))})"
        )


# ---- sections ----------------------------------------------------------------------------------


_MODE_RE = re.compile(r"^0?o?([0-7]{3,4})$")


def _mode(s: Section, key: str, default: int) -> int:
    """A permission mode: a string of octal digits ("0444") or a TOML octal integer (0o444)."""
    if key not in s.data:
        return default
    v = s.raw(key)
    if isinstance(v, str):
        m = _MODE_RE.match(v.strip())
        if m is None:
            raise s.err(key, f'must be octal digits like "0444", got {v!r}')
        mode = int(m.group(1), 8)
    elif isinstance(v, int) and not isinstance(v, bool):
        mode = v
    else:
        raise s.err(key, f'must be a mode like "0444" or 0o444, got {tname(v)}')
    if not 0 <= mode <= 0o777:
        raise s.err(key, f'{v!r} is not a permission mode; write e.g. "0444" or 0o444')
    if mode & 0o222:
        # also catches a decimal 444 (= 0o674) written for 0o444
        raise s.err(
            key,
            f"{v!r} is mode {mode:04o}, with write bits: fusefs is read-only; write e.g. "
            f'"{default:04o}" (an integer is decimal unless written 0o...)',
        )
    return mode


def _id(s: Section, key: str) -> int | None:
    if key not in s.data:
        return None
    v = s.raw(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise s.err(key, f"must be a numeric id (an integer >= 0), got {tname(v)}")
    if not 0 <= v < 2**32 - 1:
        raise s.err(key, f"must be an id >= 0, got {v!r}")
    return v


def _path(s: Section, key: str) -> Path | None:
    raw = s.str_(key)
    if raw is None:
        return None
    path = Path(os.path.expandvars(os.path.expanduser(raw)))
    return path if path.is_absolute() else s.base / path


def _mount(s: Section) -> MountOptions:
    known(
        s,
        {
            "request_timeout",
            "dir_ttl",
            "log_level",
            "log_file",
            "xattrs",
            "allow_other",
            "default_permissions",
            "uid",
            "gid",
            "file_mode",
            "dir_mode",
        },
    )
    level = (s.str_("log_level", "info") or "info").lower()
    if level not in LOG_LEVELS:
        raise s.err("log_level", f"must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    default_permissions = (
        s.bool_("default_permissions", False) if s.has("default_permissions") else None
    )
    return MountOptions(
        request_timeout=s.float_("request_timeout", 60.0),
        dir_ttl=s.float_("dir_ttl", 60.0),
        log_level=level,
        xattrs=s.bool_("xattrs", False),
        allow_other=s.bool_("allow_other", False),
        default_permissions=default_permissions,
        uid=_id(s, "uid"),
        gid=_id(s, "gid"),
        file_mode=_mode(s, "file_mode", 0o444),
        dir_mode=_mode(s, "dir_mode", 0o555),
        log_file=_path(s, "log_file"),
    )


def _cache(s: Section) -> CacheConfig:
    known(s, {"dir", "block_size", "max_size", "min_free_ratio", "memory_budget"})
    d = s.str_("dir", "~/.cache/fusefs") or "~/.cache/fusefs"
    path = Path(os.path.expandvars(os.path.expanduser(d)))
    if not path.is_absolute():
        path = s.base / path
    ratio = s.float_("min_free_ratio", 0.05, positive=False)
    if not 0.0 <= ratio < 1.0:
        raise s.err("min_free_ratio", f"must be within 0 <= ratio < 1, got {ratio!r}")
    cfg = CacheConfig(
        dir=path,
        block_size=s.size("block_size", 1 << 20),
        max_size=s.size("max_size", 10 << 30),
        min_free_ratio=ratio,
        memory_budget=s.size("memory_budget", 256 << 20),
    )
    if cfg.block_size > cfg.max_size:
        raise s.err("block_size", "must not exceed max_size")
    return cfg


def _http(s: Section) -> HttpConfig:
    known(s, {"ca_bundle", "proxy", "connect_timeout", "read_timeout"})
    ca: Path | None = None
    raw = s.str_("ca_bundle")
    if raw:
        ca = Path(os.path.expandvars(os.path.expanduser(raw)))
        if not ca.is_absolute():
            ca = s.base / ca
        if not ca.is_file():
            raise s.err("ca_bundle", f"{ca} is not a file")
    proxy = s.str_("proxy")
    if proxy is not None and not re.match(r"^https?://[^/\s]+/?$", proxy):
        raise s.err("proxy", f"must be http://host:port or https://host:port, got {proxy!r}")
    return HttpConfig(
        ca_bundle=ca,
        proxy=proxy,
        connect_timeout=s.float_("connect_timeout", 10.0),
        read_timeout=s.float_("read_timeout", 30.0),
    )


def _metrics(s: Section) -> MetricsConfig:
    known(s, {"address"})
    raw = s.str_("address")
    if raw is None:
        return MetricsConfig()
    return MetricsConfig(address=host_port(raw, lambda msg: s.err("address", msg)))


def _fleet(s: Section) -> FleetSettings:
    keys = {"url", "key_prefix", "tls_ca_file", "lease_seconds", "lease_wait", "block_ttl"}
    keys.add("share_tokens")
    known(s, keys | {f"{k}{x}" for k in ("username", "password") for x in ("", "_env", "_file")})
    url = s.str_("url", required=True)
    assert url is not None
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise s.err("url", f"must be redis://host:port/db or rediss://… (TLS), got {url!r}")
    if "@" in parts.netloc:
        raise s.err("url", "must not carry credentials; use username_env/password_env or _file")
    prefix = s.str_("key_prefix", "fusefs")
    assert prefix is not None
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", prefix):
        raise s.err("key_prefix", f"1-64 of A-Z a-z 0-9 _ . : -, got {prefix!r}")

    def optional_secret(key: str) -> Secret | None:
        has = s.has(key) or s.has(f"{key}_env") or s.has(f"{key}_file")
        return s.secret(key) if has else None

    ca = s.str_("tls_ca_file")
    ca_path = None
    if ca is not None:
        ca_path = Path(os.path.expanduser(ca))
        if not ca_path.is_absolute():
            ca_path = s.base / ca_path
    return FleetSettings(
        url=url,
        key_prefix=prefix,
        username=optional_secret("username"),
        password=optional_secret("password"),
        tls_ca_file=ca_path,
        lease_seconds=s.float_("lease_seconds", 30.0),
        lease_wait=s.float_("lease_wait", 30.0, positive=False),
        block_ttl=s.float_("block_ttl", 7 * 86400.0),
        share_tokens=s.bool_("share_tokens", False),
    )


def host_port(text: str, err: Callable[[str], ConfigError]) -> tuple[str, int]:
    """``host:port`` (``[::1]:port`` for IPv6) as (host, port)."""
    host, sep, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise err(f'must be host:port, e.g. "127.0.0.1:9464", got {text!r}')
    if ":" in host and not text.strip().startswith("["):
        raise err(f'write an IPv6 address in brackets, e.g. "[::1]:9464", got {text!r}')
    return host, int(port)


_GENERIC: dict[str, Callable[[Section], Any]] = {
    "mount": _mount,
    "cache": _cache,
    "http": _http,
    "metrics": _metrics,
    "fleet": _fleet,
}


def read_toml(path: Path) -> dict[str, Any]:
    """The TOML document at ``path`` (warns when others may read it: it names the secrets)."""
    path = Path(path)
    try:
        st = path.stat()
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config {path} is not UTF-8 text") from None
    if st.st_mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning(
            "config %s is readable by group/others (mode %o); consider chmod 600 %s",
            path,
            stat.S_IMODE(st.st_mode),
            path,
        )
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def parse_sections(
    data: Mapping[str, Any],
    env: Mapping[str, str],
    *,
    providers: Sequence[tuple[SectionSpec, Sequence[SectionSpec]]],
    base: Path | None = None,
    path: Path | None = None,
) -> MountConfig:
    """Validate a parsed TOML document against the generic sections and ``providers``: each
    provider's section with the shared sections it needs (``fusefs.providers.registry``)."""
    specs: dict[str, SectionSpec] = {}
    for spec, shared in providers:
        for s in (*shared, spec):
            specs.setdefault(s.name, s)
    known_names = [*_GENERIC, *specs]
    unknown = sorted(set(data) - set(known_names))
    if unknown:
        raise ConfigError(
            f"unknown section [{unknown[0]}] (known sections: {', '.join(known_names)})"
        )
    base = base or Path.cwd()
    generic: dict[str, Any] = {}
    for name, parser in _GENERIC.items():
        if name in data:
            generic[name] = parser(Section(name, data[name], env, base))
    sections: dict[str, object | None] = {}
    for name, spec in specs.items():
        sections[name] = spec.parse(Section(name, data[name], env, base)) if name in data else None
    names = [spec.name for spec, _ in providers]
    if not any(sections.get(name) is not None for name in names):
        raise ConfigError(
            "no provider configured: add at least one of "
            + ", ".join(f"[{name}]" for name in names)
        )
    for spec, shared in providers:
        for need in shared:
            if sections.get(spec.name) is not None and sections.get(need.name) is None:
                raise ConfigError(
                    f"[{spec.name}] needs {need.what}: add an [{need.name}] section "
                    f"({need.keys_hint})"
                )
    return MountConfig(
        mount=generic.get("mount", MountOptions()),
        cache=generic.get("cache", CacheConfig()),
        http=generic.get("http", HttpConfig()),
        metrics=generic.get("metrics", MetricsConfig()),
        fleet=generic.get("fleet"),
        sections=sections,
        path=path,
    )
