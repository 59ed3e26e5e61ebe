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


def _setup_logging(level: str, logfile: Path | None = None) -> None:
    handler: logging.Handler = (
        logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.stderr)
    )
    from fusefs.logs import OneLineFormatter  # one record = one line, server text escaped

    handler.setFormatter(
        OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def _fail(msg: str) -> int:
    print(f"fusefs: error: {msg}", file=sys.stderr)
    return 2


def _fail_to(status: StatusWriter, msg: str) -> int:
    """Fail, telling the starter too (the background ``fusefs mount``, the demo)."""
    status.error(msg)
    return _fail(msg)


def cmd_mount(args: argparse.Namespace) -> int:
    from fusefs.config import ConfigError
    from fusefs.mount import MountError, check_mountpoint
    from fusefs.providers.registry import load_config

    status = StatusWriter(args.status_fd)
    mnt = Path(args.mountpoint).absolute()
    try:
        cfg = load_config(Path(args.config))
        check_mountpoint(mnt, allow_non_empty=args.allow_non_empty)
    except (ConfigError, MountError) as exc:
        return _fail_to(status, str(exc))
    level = "debug" if args.debug else cfg.mount.log_level
    if not args.foreground:
        return _spawn_background(args, mnt)
    _setup_logging(level)
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
            )
        )
    except MountError as exc:
        return _fail_to(status, str(exc))
    except RuntimeError as exc:  # pyfuse3.init failures
        return _fail_to(status, f"mounting {mnt} failed: {exc}")
    finally:
        status.close()
    return 0


def _spawn_background(args: argparse.Namespace, mnt: Path) -> int:
    """Run the daemon detached, logging to a file; return once the mount is up."""
    from fusefs.daemon import START_TIMEOUT, StartError, spawn

    logdir = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "fusefs"
    logdir.mkdir(parents=True, exist_ok=True)
    logfile = logdir / f"{mnt.name or 'root'}.log"
    options = []
    if args.debug:
        options.append("--debug")
    if args.offline:
        options.append("--offline")
    if args.allow_non_empty:
        options.append("--allow-non-empty")
    daemon = spawn(args.config, mnt, logfile, options=options, new_session=True)
    try:
        warnings = daemon.wait_ready(START_TIMEOUT)
    except StartError as exc:
        return _fail(str(exc))
    for w in warnings:
        print(f"fusefs: warning: {w}", file=sys.stderr)
    print(f"fusefs: mounted {mnt} (pid {daemon.pid}, log {logfile})")
    return 0


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
        "read-only tree. See README.md and docs/.",
    )
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] in ("emulator", "world"):
        args = argparse.Namespace()
        return int(
            cmd_emulator(args, argv[1:]) if argv[0] == "emulator" else cmd_world(args, argv[1:])
        )
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
