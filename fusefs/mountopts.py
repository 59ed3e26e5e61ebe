"""``-o`` mount options (mount(8), /etc/fstab, ``fusefs mount -o``) as config overrides.

Each option names one config key (docs/configuration.md); its value goes through the same
parser as the config file, so ``-o cache_max_size=20G`` and ``max_size = "20G"`` in ``[cache]``
are one check with one error message. Options mount(8) and systemd put on every line (``ro``,
``_netdev``, ``nofail``, ``x-systemd.*`` …) are accepted and ignored; an unknown option is an
error that names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class MountOptionError(ValueError):
    """An ``-o`` option fusefs does not know or cannot read."""


@dataclass(frozen=True)
class _Opt:
    section: str
    key: str
    kind: str  # "flag" (no value), "int", "number", "text"


# one name each, as the peers spell them (gcsfuse / mountpoint-s3 / libfuse)
OPTIONS: dict[str, _Opt] = {
    "allow_other": _Opt("mount", "allow_other", "flag"),
    "default_permissions": _Opt("mount", "default_permissions", "flag"),
    "uid": _Opt("mount", "uid", "int"),
    "gid": _Opt("mount", "gid", "int"),
    "file_mode": _Opt("mount", "file_mode", "text"),
    "dir_mode": _Opt("mount", "dir_mode", "text"),
    "dir_ttl": _Opt("mount", "dir_ttl", "number"),
    "log_level": _Opt("mount", "log_level", "text"),
    "log_file": _Opt("mount", "log_file", "text"),
    "cache_dir": _Opt("cache", "dir", "text"),
    "cache_max_size": _Opt("cache", "max_size", "text"),
}

# generic options of mount(8), fstab and systemd: meaningful to them, not to us. mount(8)
# passes "rw" unless the line says "ro", and mount.fuse adds "dev,suid": a fusefs mount is
# read-only whatever they say.
_IGNORED = {
    "ro",
    "rw",
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "_netdev",
    "nofail",
    "exec",
    "noexec",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "nodiratime",
    "async",
    "sync",
    "loop",
}


def _ignored(name: str) -> bool:
    return name in _IGNORED or name.startswith(("x-", "comment="))


def parse(texts: list[str]) -> dict[str, dict[str, Any]]:
    """``-o`` arguments (each comma-separated ``name`` or ``name=value``) as TOML-shaped
    overrides: ``{"mount": {"uid": 1000}, "cache": {"max_size": "20G"}}``."""
    out: dict[str, dict[str, Any]] = {}
    unknown: list[str] = []
    for text in texts:
        for item in text.split(","):
            item = item.strip()
            if not item or _ignored(item):
                continue
            name, eq, value = item.partition("=")
            opt = OPTIONS.get(name)
            if opt is None:
                unknown.append(name)
                continue
            parsed: Any
            if opt.kind == "flag":
                if eq and value not in ("1", "true", "yes"):
                    if value in ("0", "false", "no"):
                        parsed = False
                    else:
                        raise MountOptionError(f"-o {name} takes no value, got {value!r}")
                else:
                    parsed = True
            elif not eq or not value:
                raise MountOptionError(f"-o {name} needs a value: {name}=...")
            elif opt.kind == "int":
                try:
                    parsed = int(value, 10)
                except ValueError:
                    raise MountOptionError(f"-o {name}: {value!r} is not a number") from None
            elif opt.kind == "number":
                try:
                    parsed = int(value, 10) if value.isdigit() else float(value)
                except ValueError:
                    raise MountOptionError(f"-o {name}: {value!r} is not a number") from None
            else:
                parsed = value
            out.setdefault(opt.section, {})[opt.key] = parsed
    if unknown:
        known = ", ".join(sorted(OPTIONS))
        raise MountOptionError(
            f"unknown mount option{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}"
            f" (fusefs knows: {known})"
        )
    return out


def overlay(raw: dict[str, Any], overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The config file's tables with ``overrides`` on top (the file itself is not changed)."""
    merged = dict(raw)
    for section, values in overrides.items():
        table = merged.get(section, {})
        merged[section] = {**table, **values} if isinstance(table, dict) else table
    return merged


def unknown(texts: list[str]) -> list[str]:
    """The option names in ``texts`` that fusefs does not know (for mount's sloppy ``-s``)."""
    items = [i.strip() for t in texts for i in t.split(",") if i.strip()]
    names = [i.partition("=")[0] for i in items if not _ignored(i)]
    return [n for n in names if n not in OPTIONS]


def without(text: str, names: list[str]) -> str:
    """``text`` without the options called ``names``."""
    kept = [i for i in text.split(",") if i.strip().partition("=")[0] not in names]
    return ",".join(kept)


def format_option(name: str, value: object) -> str:
    """A flag's value as the ``-o`` text that sets the same key (``uid=1000``, ``allow_other``)."""
    if name not in OPTIONS:
        raise MountOptionError(f"unknown mount option: {name}")
    if isinstance(value, bool):
        return name if value else f"{name}=false"
    text = str(value)
    if "," in text:
        raise MountOptionError(f"{name}: {text!r} has a comma, which -o cannot carry")
    return f"{name}={text}"
