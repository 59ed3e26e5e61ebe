"""fusefs: mount IoT cloud file stores (EnOS, KooDrive, IoTDA, ROMA Connect) as one read-only tree.

This module is the command line only: parsing, messages and exit codes."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fusefs.daemon import StatusWriter

if TYPE_CHECKING:
    from collections.abc import Iterator

    from fusefs.control import MountInfo

log = logging.getLogger("fusefs")


def _fail(msg: str) -> int:
    print(f"fusefs: error: {msg}", file=sys.stderr)
    return 2


def _fail_to(status: StatusWriter, msg: str) -> int:
    """Fail, telling the starter too (the background ``fusefs mount``, the demo)."""
    status.error(msg)
    return _fail(msg)


def _abspath(text: str) -> str:
    """A path flag is relative to where the command runs (in the file: to the file)."""
    return os.path.abspath(os.path.expanduser(text))


# `fusefs mount` flags that set a config key, as -o does: (flag, -o name, argparse keywords).
# The flag and the -o option have the same name (dashes for underscores).
_KEY_FLAGS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "--allow-other",
        "allow_other",
        {
            "action": "store_true",
            "default": None,
            "help": "let other users use the mount ([mount] allow_other)",
        },
    ),
    (
        "--default-permissions",
        "default_permissions",
        {
            "action": argparse.BooleanOptionalAction,
            "default": None,
            "help": "the kernel checks the modes (default: on with --allow-other)",
        },
    ),
    ("--uid", "uid", {"type": int, "metavar": "N", "help": "owner of every file (default: yours)"}),
    ("--gid", "gid", {"type": int, "metavar": "N", "help": "group of every file (default: yours)"}),
    ("--file-mode", "file_mode", {"metavar": "MODE", "help": "mode of files (default 0444)"}),
    ("--dir-mode", "dir_mode", {"metavar": "MODE", "help": "mode of directories (default 0555)"}),
    (
        "--dir-ttl",
        "dir_ttl",
        {"type": float, "metavar": "SECONDS", "help": "how long a listing is kept"},
    ),
    ("--log-level", "log_level", {"metavar": "LEVEL", "help": "debug, info, warning, error"}),
    ("--log-file", "log_file", {"type": _abspath, "metavar": "PATH", "help": "log to this file"}),
    ("--cache-dir", "cache_dir", {"type": _abspath, "metavar": "PATH", "help": "the cache's dir"}),
    ("--cache-max-size", "cache_max_size", {"metavar": "SIZE", "help": "cache cap, e.g. 20G"}),
]


def _flag_dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _key_options(args: argparse.Namespace) -> list[str]:
    """The -o texts and key flags given, as -o texts (flags last: they win)."""
    from fusefs.mountopts import format_option

    texts = list(getattr(args, "options", None) or [])
    for flag, name, _ in _KEY_FLAGS:
        value = getattr(args, _flag_dest(flag), None)
        if value is not None:
            texts.append(format_option(name, value))
    if getattr(args, "debug", False):
        texts.append("log_level=debug")
    return texts


def cmd_mount(args: argparse.Namespace) -> int:
    from fusefs import logs, mountopts
    from fusefs.config import ConfigError
    from fusefs.mount import MountError, check_mountpoint
    from fusefs.providers.registry import load_config

    status = StatusWriter(args.status_fd)
    mnt = Path(args.mountpoint).absolute()
    texts = _key_options(args)
    try:
        overrides = mountopts.parse(texts)
        cfg = load_config(Path(args.config), overrides=overrides)
        check_mountpoint(mnt, allow_non_empty=args.allow_non_empty)
    except (ConfigError, MountError, mountopts.MountOptionError) as exc:
        return _fail_to(status, str(exc))
    if not args.foreground:
        return _spawn_background(args, mnt, texts, cfg.mount.log_file)
    logs.setup(cfg.mount.log_level, cfg.mount.log_file)
    import trio

    from fusefs.mount import run_mount

    try:
        trio.run(
            functools.partial(
                run_mount,
                cfg,
                mnt,
                offline=args.offline,
                allow_non_empty=args.allow_non_empty,
                ready=functools.partial(status.ready, mnt),
                # SIGHUP rereads the file with the same -o options and flags on top
                reload=functools.partial(load_config, Path(args.config), overrides=overrides),
            )
        )
    except MountError as exc:
        return _fail_to(status, str(exc))
    except RuntimeError as exc:  # pyfuse3.init failures
        return _fail_to(status, f"mounting {mnt} failed: {exc}")
    finally:
        status.close()
    return 0


def _spawn_background(
    args: argparse.Namespace, mnt: Path, texts: list[str], log_file: Path | None
) -> int:
    """Run the daemon detached; return once the mount is up. It logs to ``log_file``, else to
    the journal when we run under systemd, else to a file named after the mountpoint."""
    from fusefs import logs
    from fusefs.daemon import START_TIMEOUT, StartError, spawn

    options = [a for t in texts for a in ("-o", t)]
    if args.offline:
        options.append("--offline")
    if args.allow_non_empty:
        options.append("--allow-non-empty")
    logfile: Path | None = log_file
    if logfile is None and not logs.under_journald():
        logfile = logs.default_log_file(mnt)
        options += ["--log-file", str(logfile)]  # the daemon's own handler: it can reopen it
    if logfile is not None:
        logfile.parent.mkdir(parents=True, exist_ok=True)
    config = Path(args.config).absolute()
    daemon = spawn(config, mnt, logfile, options=options, new_session=True)
    try:
        warnings = daemon.wait_ready(START_TIMEOUT)
    except StartError as exc:
        return _fail(str(exc))
    for w in warnings:
        print(f"fusefs: warning: {w}", file=sys.stderr)
    where = f"log {logfile}" if logfile is not None else "logging to the journal"
    if not getattr(args, "quiet", False):
        print(f"fusefs: mounted {mnt} (pid {daemon.pid}, {where})")
    return 0


# mount(8)'s exit status for "mount failure" (a helper's status is mount's)
MOUNT_FAILURE = 32


def mount_helper(argv: list[str] | None = None, prog: str = "mount.fusefs") -> int:
    """mount(8)'s helper convention: ``SPEC DIR [-sfnv] [-o OPTS] [-t TYPE]``; /sbin/mount.fuse
    calls ``fusefs SPEC DIR -o OPTS`` the same way. SPEC is the config file. Backgrounds the
    daemon and returns once mounted; 32 (mount failure) with the reason otherwise."""
    from fusefs import mountopts

    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(
        prog=prog,
        description="mount(8) helper: mount -t fuse.fusefs CONFIG MOUNTPOINT -o OPTIONS "
        "(docs/operations.md)",
    )
    p.add_argument("config", metavar="SPEC", help="the TOML config file")
    p.add_argument("mountpoint", metavar="DIR")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTS")
    p.add_argument("-s", dest="sloppy", action="store_true", help="ignore unknown options")
    p.add_argument("-f", dest="fake", action="store_true", help="check only, do not mount")
    p.add_argument("-n", dest="no_mtab", action="store_true", help="(accepted, no effect)")
    p.add_argument("-v", dest="verbose", action="store_true", help="say what is done")
    p.add_argument("-t", dest="type", default=None, help="(accepted: fuse.fusefs or fusefs)")
    p.add_argument("-N", dest="namespace", default=None, help=argparse.SUPPRESS)
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return MOUNT_FAILURE if exc.code else 0
    if args.namespace is not None:
        print(f"{prog}: error: -N (mount namespaces) is not supported", file=sys.stderr)
        return MOUNT_FAILURE
    if args.sloppy:
        unknown = mountopts.unknown(args.options)
        if unknown:
            print(f"{prog}: ignoring unknown options: {', '.join(unknown)}", file=sys.stderr)
            args.options = [mountopts.without(t, unknown) for t in args.options]
    ns = argparse.Namespace(
        config=args.config,
        mountpoint=args.mountpoint,
        options=args.options,
        foreground=False,
        offline=False,
        allow_non_empty=False,
        status_fd=None,
        debug=False,
        quiet=not args.verbose,
    )
    if args.fake:
        rc = cmd_config_check(
            argparse.Namespace(
                file=args.config, probe=False, options=args.options, quiet=not args.verbose
            )
        )
        return MOUNT_FAILURE if rc else 0
    return MOUNT_FAILURE if cmd_mount(ns) else 0


def mount_helper_main() -> int:
    """The ``mount.fusefs`` console script."""
    return mount_helper(None, "mount.fusefs")


def cmd_unmount(args: argparse.Namespace) -> int:
    from fusefs.daemon import UnmountError, mount_path, unmount

    mnt = mount_path(Path(args.mountpoint))
    try:
        dead = unmount(mnt)
    except UnmountError as exc:
        return _fail(str(exc))
    if dead:
        print(f"fusefs: cleaned up the dead mount at {mnt}", file=sys.stderr)
    return 0


def _by_mount(paths: list[str]) -> tuple[MountInfo, list[str]]:
    """The one mount the paths are in, and each path relative to its root (in order)."""
    from fusefs.control import find_mount, mount_table

    table = mount_table()
    found = [find_mount(Path(p), table) for p in paths]
    roots = {m for m, _ in found}
    if len(roots) != 1:
        raise ValueError("give paths of one mount at a time")
    return roots.pop(), [rel for _, rel in found]


def cmd_status(args: argparse.Namespace) -> int:
    from fusefs.status import show

    try:
        return show(Path(args.mountpoint), as_json=args.json)
    except (ValueError, OSError) as exc:
        return _fail(str(exc))


def cmd_cache(args: argparse.Namespace) -> int:
    from fusefs.control import find_mount, request

    try:
        mnt, rel = find_mount(Path(args.mountpoint))
        if args.action == "stats":
            (stats,) = list(request(mnt, {"op": "stats"}))
            width = max(len(k) for k in stats)
            for k, v in stats.items():
                print(f"{k:<{width}}  {v}")
        elif args.action == "verify":
            (res,) = list(request(mnt, {"op": "verify"}))
            print(f"checked {res['checked']} blocks, {res['bad']} corrupt (dropped)")
            return 1 if res["bad"] else 0
        else:
            paths = [find_mount(Path(p))[1] for p in args.paths] if args.paths else []
            if not args.paths and rel != ".":
                paths = [rel]
            (res,) = list(request(mnt, {"op": "clear", "paths": paths}))
            print(f"freed {res['freed']} bytes")
    except (ValueError, OSError) as exc:
        return _fail(str(exc))
    return 0


def cmd_warm(args: argparse.Namespace) -> int:
    """prefetch / pin / unpin PATH...: with a progress bar for the first two."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from fusefs.control import request

    try:
        mnt, rels = _by_mount(args.paths)
        rel = list(dict.fromkeys(rels))  # the same file twice would count twice
        if args.op == "unpin":
            (res,) = list(request(mnt, {"op": "unpin", "paths": rel}))
            print(f"unpinned {res['unpinned']} files")
            return 0
        replies = request(mnt, {"op": args.op, "paths": rel})
        head = next(replies)
        total = int(head["total"])
        t0 = time.monotonic()
        if head.get("queue"):  # sizes unknown, one download per window (IoTDA)
            _print_queue(head["queue"])
            return _warm_by_files(args.op, head, replies, t0)
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, transient=True) as progress:
            task = progress.add_task(f"{args.op} {head['files']} files", total=total)
            for reply in replies:
                progress.update(task, completed=int(reply["done"]))
        took = time.monotonic() - t0
        verb = "pinned" if args.op == "pin" else "cached"
        print(f"{verb} {head['files']} files, {total} bytes in {took:.1f} s")
    except (ValueError, OSError, StopIteration) as exc:
        return _fail(str(exc) or "the daemon ended the request")
    except KeyboardInterrupt:  # Ctrl-C stops the command, not the mount's downloads
        print(
            f"fusefs: {args.op} stopped; what was downloaded stays in the cache (the download "
            "under way, and with background_fetch the queue, go on in the mount)",
            file=sys.stderr,
        )
        return 130
    return 0


def _duration(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _print_queue(queue: list[dict[str, Any]]) -> None:
    """The files waiting for a download turn, with when each turn should come."""
    etas = [float(q["eta"]) for q in queue if q.get("eta") is not None]
    interval = next((q["interval"] for q in queue if q.get("interval")), None)
    rule = f", one download per {interval:g} s" if interval is not None else ""
    last = f"; the last in about {_duration(max(etas))}" if etas else ""
    print(f"{len(queue)} files of unknown size wait for their download turn{rule}{last}:")
    for i, q in enumerate(queue, 1):
        eta = q.get("eta")
        when = "-" if eta is None else ("next" if eta < 0.5 else f"in {_duration(eta)}")
        print(f"  {i:>3}  {when:>16}  {q['file']}")
    sys.stdout.flush()  # shown now, also through a pipe: the downloads take windows


def _warm_by_files(
    op: str, head: dict[str, Any], replies: Iterator[dict[str, Any]], t0: float
) -> int:
    """Progress in files (their sizes come with their downloads), with the daemon's ETA."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    nfiles = int(head["files"])
    done = 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(f"{op} {nfiles} files", total=nfiles)
        for reply in replies:
            done = int(reply["done"])
            eta = reply.get("eta")
            text = f"{op} {nfiles} files"
            if eta:
                text += f", about {_duration(float(eta))} left"
            progress.update(task, completed=int(reply["files_done"]), description=text)
    verb = "pinned" if op == "pin" else "cached"
    print(f"{verb} {nfiles} files, {done} bytes in {time.monotonic() - t0:.1f} s")
    return 0


def _info_text(value: object) -> str:
    if isinstance(value, bool):  # as the user.fusefs.* xattrs show them
        return "1" if value else "0"
    return "-" if value is None else str(value)


def cmd_info(args: argparse.Namespace) -> int:
    """Per-file state (the user.fusefs.* fields) from the daemon, xattrs on or off."""

    from fusefs.control import request

    try:
        mnt, rels = _by_mount(args.paths)
        replies = list(request(mnt, {"op": "info", "paths": rels}))
    except (ValueError, OSError) as exc:
        return _fail(str(exc))
    status = 0
    for i, (path, reply) in enumerate(zip(args.paths, replies, strict=True)):
        reply["path"] = path
        if "failed" in reply:
            print(f"fusefs: {path}: {reply['failed']}", file=sys.stderr)
            status = 1
            continue
        if args.json:
            print(json.dumps(reply, ensure_ascii=False))
            continue
        if i:
            print()
        print(path)
        fields = {k: v for k, v in reply.items() if k != "path"}
        width = max(len(k) for k in fields)
        for k, v in fields.items():
            print(f"  {k:<{width}}  {_info_text(v)}")
    return status


def cmd_roma_export(args: argparse.Namespace) -> int:
    """Start a ROMA Connect asset export job; its archive appears once the job is in the config."""
    import trio

    from fusefs.config import ConfigError
    from fusefs.mount import make_http_client
    from fusefs.providers.base import ProviderError
    from fusefs.providers.registry import build_providers, load_config
    from fusefs.providers.roma import RomaProvider

    async def start() -> str:
        async with make_http_client(cfg.http) as client:
            providers = build_providers(cfg, client)
            try:
                roma = next((p for p in providers if isinstance(p, RomaProvider)), None)
                if roma is None:
                    raise ConfigError(f"{args.config}: no [roma] section")
                return await roma.start_export(args.instance, args.app, args.task)
            finally:
                for p in providers:
                    await p.aclose()

    try:
        cfg = load_config(Path(args.config))
        job = trio.run(start)
    except (ConfigError, ProviderError) as exc:
        return _fail(str(exc))
    print(job)
    print(
        f"fusefs: started export job {job}; add it to `jobs` of instance {args.instance} in "
        f"[roma] of {args.config}: its archive appears under roma/{args.instance}/archives/ "
        "once the job has SUCCEEDED",
        file=sys.stderr,
    )
    return 0


def _executable() -> Path:
    """The ``fusefs`` console script of this installation (for the unit's ExecStart)."""
    import shutil

    beside = Path(sys.executable).parent / "fusefs"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("fusefs")
    if found is None:
        raise FileNotFoundError(
            f"no fusefs executable next to {sys.executable} or on PATH; install fusefs "
            "(pip install .) first"
        )
    return Path(found).absolute()


def cmd_systemd_unit(args: argparse.Namespace) -> int:
    """Print (or install) a systemd service for one mount (fusefs/systemd.py)."""
    import shutil

    from fusefs import systemd

    config = Path(args.config).absolute()
    mnt = Path(args.mountpoint).absolute()
    env_file = Path(args.env_file).absolute() if args.env_file else config.parent / "fusefs.env"
    if not config.is_file():
        return _fail(f"config {config} does not exist (fusefs config check checks it)")
    try:
        exe = _executable()
    except FileNotFoundError as exc:
        return _fail(str(exc))
    fusermount = shutil.which("fusermount3") or "/bin/fusermount3"
    text = systemd.unit_text(
        executable=exe, config=config, mountpoint=mnt, env_file=env_file, fusermount=fusermount
    )
    if not args.install:
        print(text, end="")
        return 0
    name = systemd.unit_name(mnt)
    target = Path(args.unit_dir) / name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(0o644)
    except OSError as exc:
        return _fail(f"cannot write {target}: {exc.strerror or exc} (run as root?)")
    print(f"fusefs: wrote {target}", file=sys.stderr)
    print(
        f"fusefs: now run `systemctl daemon-reload && systemctl enable --now {name}`; put the "
        f"secrets into {env_file} (mode 0600)",
        file=sys.stderr,
    )
    return 0


def _size_text(n: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.4g} {unit}"
    return f"{n} B"


def cmd_config_check(args: argparse.Namespace) -> int:
    """Validate a config (the mount's own parser and messages); ``--probe``: authenticate
    against each provider as a mount's start does and list its top-level folders."""
    from fusefs import mountopts
    from fusefs.config import ConfigError
    from fusefs.providers.registry import load_config

    try:
        overrides = mountopts.parse(list(getattr(args, "options", None) or []))
        cfg = load_config(Path(args.file), overrides=overrides)
    except (ConfigError, mountopts.MountOptionError) as exc:
        return _fail(str(exc))
    names = [name for name, section in cfg.sections.items() if section is not None]
    providers = [n for n in names if n not in ("iam",)]
    quiet = getattr(args, "quiet", False)
    if not quiet:
        print(f"{args.file}: ok")
        print(f"  mounts      {', '.join('/' + n for n in providers)}")
        print(f"  cache       {cfg.cache.dir}, at most {_size_text(cfg.cache.max_size)}")
        m = cfg.mount
        uid = "the mounting user's" if m.uid is None else str(m.uid)
        gid = "the mounting user's" if m.gid is None else str(m.gid)
        print(f"  modes       files {m.file_mode:04o}, directories {m.dir_mode:04o}")
        print(f"  owner       uid {uid}, gid {gid}")
        print(
            f"  access      {'all users (allow_other)' if m.allow_other else 'the mounting user'}"
        )
        address = cfg.metrics.address
        print(f"  metrics     {'off' if address is None else f'http://{address[0]}:{address[1]}/'}")
    if not args.probe:
        return 0
    import trio

    return trio.run(_probe, cfg)


async def _probe(cfg: Any) -> int:
    import trio

    from fusefs.mount import AUTH_CHECK_TIMEOUT, check_providers, make_http_client
    from fusefs.providers.base import ProviderError
    from fusefs.providers.registry import build_providers

    timeout = min(AUTH_CHECK_TIMEOUT, cfg.mount.request_timeout)
    failed = 0
    async with make_http_client(cfg.http) as client:
        providers = build_providers(cfg, client)
        try:
            results = await check_providers(providers, timeout)
            for p in providers:
                error = results.get(p.name)
                if error is None:
                    try:
                        with trio.fail_after(cfg.mount.request_timeout):
                            entries = await p.list_dir("")
                    except (ProviderError, trio.TooSlowError) as exc:
                        error = exc  # type: ignore[assignment]
                if error is not None:
                    failed += 1
                    print(f"  {p.name:<10}  FAILED: {error or 'no answer'}")
                    continue
                folders = sorted(e.name for e in entries)
                shown = ", ".join(folders[:10]) + (", ..." if len(folders) > 10 else "")
                print(f"  {p.name:<10}  ok: {len(folders)} top-level entries: {shown}")
        finally:
            for p in providers:
                await p.aclose()
    return 1 if failed else 0


EXAMPLE_CONFIG = """\
# fusefs configuration (docs/configuration.md). Check it with: fusefs config check FILE --probe
# Secrets are never written here: *_env names an environment variable, *_file a file (0600).
# Remove the sections of the clouds you do not use; at least one must stay.

[mount]
# request_timeout = 60.0      # seconds; a FUSE request answers EIO after this
# dir_ttl = 60.0              # seconds a directory listing is kept
# log_level = "info"          # debug, info, warning, error, critical
# log_file = "/var/log/fusefs/clouds.log"   # default: stderr, or a file per mount
# allow_other = false         # let other users use the mount (root, or user_allow_other)
# default_permissions = true  # the kernel checks the modes below (default: as allow_other)
# uid = 1000                  # owner of every file (default: the mounting user)
# gid = 1000
# file_mode = "0444"
# dir_mode = "0555"

[cache]
dir = "~/.cache/fusefs"       # one mount per cache directory
max_size = "20G"              # K/M/G/T, KiB... = powers of 1024; KB/MB/GB/TB = powers of 1000
# block_size = "1MiB"
# min_free_ratio = 0.05       # keep this much of the disk free
# memory_budget = "256MiB"

# [http]
# ca_bundle = "/etc/ssl/certs/corporate.pem"
# proxy = "http://proxy.example.com:3128"

# [metrics]
# address = "127.0.0.1:9464"  # Prometheus endpoint; absent = off

[enos]
apigw_url = "https://apim-ppe1.envisioniot.com"
# integration_url = "https://iot-http-integration-ppe1.envisioniot.com"
app_key_env = "FUSEFS_ENOS_APP_KEY"
app_secret_env = "FUSEFS_ENOS_APP_SECRET"
orgs = ["o15475466766371"]

[koodrive]
url = "https://cn.myhuaweicloud-koodrive.com"
auth = "token"
token_env = "FUSEFS_KOODRIVE_TOKEN"   # the Authorization value, e.g. "Bearer ..."
containers = [{ id = "IAADfsBFCO6WtAtuAb7e92cde625843cfb7f4ceba802e0b" }]

[iam]                         # Huawei Cloud IAM: for [iotda] and [roma]
url = "https://iam.myhuaweicloud.com"
user = "fs-reader"
domain = "my-account"
project = "cn-north-4"
password_env = "FUSEFS_IAM_PASSWORD"

[iotda]
url = "https://iotda.cn-north-4.myhuaweicloud.com"
# instance_id = "..."

[roma]
url = "https://roma.cn-north-4.myhuaweicloud.com"
instances = [{ id = "cbfa7cf5-0000-4c3a-9d0e-000000000000", jobs = [] }]
"""


def cmd_config_example(args: argparse.Namespace) -> int:
    print(EXAMPLE_CONFIG, end="")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from fusefs.demo import run_demo

    return run_demo(Path(args.mountpoint), Path(args.workdir), scale=args.scale)


def cmd_emulator(args: argparse.Namespace, rest: list[str]) -> int:
    from fusefs.emulator.__main__ import main as emulator_main

    return emulator_main(rest)


def cmd_world(args: argparse.Namespace, rest: list[str]) -> int:
    from fusefs.emulator.world import main as world_main

    return world_main(rest)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fusefs",
        description="Mount IoT cloud file stores (EnOS, KooDrive, IoTDA, ROMA Connect) as one "
        "read-only tree. See README.md and docs/. mount(8) calls it as `fusefs CONFIG "
        "MOUNTPOINT -o OPTIONS` (docs/operations.md).",
    )
    p.add_argument("--version", action="version", version=f"fusefs {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("mount", help="mount the configured clouds at MOUNTPOINT")
    m.add_argument("mountpoint")
    m.add_argument("--config", required=True, help="TOML config file (docs/configuration.md)")
    m.add_argument("--foreground", "-f", action="store_true", help="stay in the foreground")
    m.add_argument("--debug", action="store_true", help="log every request")
    m.add_argument(
        "--offline",
        action="store_true",
        help="never contact the clouds: saved listings and cached bytes only",
    )
    m.add_argument(
        "--allow-non-empty",
        action="store_true",
        help="mount over a directory that holds files (hidden while mounted)",
    )
    m.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="OPTS",
        help="mount options, comma-separated: allow_other,uid=1000,cache_max_size=20G,... "
        "(repeatable; docs/operations.md)",
    )
    for flag, _, kw in _KEY_FLAGS:
        m.add_argument(flag, dest=_flag_dest(flag), **kw)
    m.add_argument("--status-fd", type=int, default=None, help=argparse.SUPPRESS)
    m.set_defaults(func=cmd_mount)

    u = sub.add_parser("unmount", help="unmount MOUNTPOINT")
    u.add_argument("mountpoint")
    u.set_defaults(func=cmd_unmount)

    d = sub.add_parser("demo", help="start the emulator with a sample world and mount it")
    d.add_argument("mountpoint", nargs="?", default="mnt")
    d.add_argument("--workdir", default=".fusefs-demo", help="where the world and cache live")
    d.add_argument("--scale", default="demo", choices=["tiny", "demo", "bench"])
    d.set_defaults(func=cmd_demo)

    c = sub.add_parser("cache", help="cache statistics, verification and clearing (mounted)")
    c.add_argument("action", choices=["stats", "verify", "clear"])
    c.add_argument("mountpoint", help="the mount (or, for clear, a path inside it)")
    c.add_argument("paths", nargs="*", help="clear: only these paths inside the mount")
    c.set_defaults(func=cmd_cache)

    st = sub.add_parser("status", help="providers, cache, downloads, last warnings (mounted)")
    st.add_argument("mountpoint")
    st.add_argument("--json", action="store_true", help="the daemon's answer as one JSON line")
    st.set_defaults(func=cmd_status)

    i = sub.add_parser(
        "info",
        help="per-file state: remote id, version, cached bytes, pinned, link expiry (mounted)",
    )
    i.add_argument("paths", nargs="+", metavar="PATH")
    i.add_argument("--json", action="store_true", help="one JSON object per PATH and line")
    i.set_defaults(func=cmd_info)

    for op, text in (
        ("prefetch", "download PATHs into the cache (within its cap)"),
        ("pin", "download PATHs and keep them: never evicted (offline use)"),
        ("unpin", "let pinned PATHs be evicted again"),
    ):
        warm = sub.add_parser(op, help=text)
        warm.add_argument("paths", nargs="+")
        warm.set_defaults(func=cmd_warm, op=op)

    su = sub.add_parser("systemd-unit", help="print or install a systemd service for a mount")
    su.add_argument("mountpoint")
    su.add_argument("--config", required=True, help="TOML config file")
    su.add_argument(
        "--env-file",
        default=None,
        help="secrets for the service (default: CONFIG's dir/fusefs.env)",
    )
    su.add_argument("--install", action="store_true", help="write it into --unit-dir")
    su.add_argument("--unit-dir", default="/etc/systemd/system", help=argparse.SUPPRESS)
    su.set_defaults(func=cmd_systemd_unit)

    cf = sub.add_parser("config", help="check a config file, or print an example")
    cfsub = cf.add_subparsers(dest="config_command", required=True)
    ck = cfsub.add_parser("check", help="validate FILE as a mount would (exit 2 if wrong)")
    ck.add_argument("file")
    ck.add_argument(
        "--probe",
        action="store_true",
        help="also authenticate against each provider and list its top-level folders",
    )
    ck.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="OPTS",
        help="check with these mount options too",
    )
    ck.set_defaults(func=cmd_config_check)
    ex = cfsub.add_parser("example", help="print a commented example config")
    ex.set_defaults(func=cmd_config_example)

    r = sub.add_parser("roma", help="ROMA Connect: start an asset export job")
    rsub = r.add_subparsers(dest="roma_command", required=True)
    rx = rsub.add_parser("export", help="start an export job; prints its job id")
    rx.add_argument("instance", help="ROMA Connect instance id")
    rx.add_argument("--config", required=True, help="TOML config with [iam] and [roma]")
    rx.add_argument("--app", action="append", default=[], help="application id (repeatable)")
    rx.add_argument("--task", action="append", default=[], help="task id (repeatable)")
    rx.set_defaults(func=cmd_roma_export)

    e = sub.add_parser(
        "emulator", help="run the cloud emulator (see docs/emulator.md)", add_help=False
    )
    e.set_defaults(func=None, passthrough=cmd_emulator)
    w = sub.add_parser("world", help="generate a world (see docs/world.md)", add_help=False)
    w.set_defaults(func=None, passthrough=cmd_world)
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fusefs")
    except PackageNotFoundError:
        from fusefs import __version__

        return __version__


def _commands(parser: argparse.ArgumentParser) -> list[str]:
    return [
        name
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name in action.choices
    ]


def _is_helper_call(argv: list[str], commands: list[str]) -> bool:
    """``fusefs CONFIG MOUNTPOINT ...`` (how /sbin/mount.fuse runs a fuse.fusefs mount)."""
    if len(argv) < 2 or argv[0].startswith("-") or argv[0] in commands:
        return False
    return "/" in argv[0] or "." in argv[0] or os.path.exists(argv[0])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if _is_helper_call(argv, _commands(parser)):
        return mount_helper(argv, "fusefs")
    if argv and argv[0] in ("emulator", "world"):
        args = argparse.Namespace()
        return int(
            cmd_emulator(args, argv[1:]) if argv[0] == "emulator" else cmd_world(args, argv[1:])
        )
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
