"""The systems measured: fusefs (default config and ``xattrs = false``), rclone mount (:http:,
cache off and full) and httpdirfs --cache; how each is mounted, found and unmounted."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .dataset import Dataset
from .util import PY, BenchError, Proc, fuse_unmount, is_mount, tail

MOUNT_TIMEOUT = 30.0


@dataclass
class Target:
    """Where a system reads the bytes from in one profile and scheme."""

    scheme: str  # http | https
    peer_url: str  # the data set's files/ folder on nginx or the proxy (rclone, httpdirfs)
    emulator_url: str  # the emulator whose KooDrive links point at that same server (fusefs)
    ca: Path


@dataclass
class Mounted:
    system: System
    proc: Proc
    mnt: Path
    root: Path  # the data set's files/ folder inside the mount
    command: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log(self) -> Path:
        return self.proc.log


@dataclass
class System:
    key: str
    label: str
    work: Path
    ds: Dataset
    commands: list[str] = field(default_factory=list)
    mount_seconds: list[float] = field(default_factory=list)
    unmount_seconds: list[float] = field(default_factory=list)
    last_exit: int | None = None  # exit status if the daemon had died before the unmount

    @property
    def mnt(self) -> Path:
        return self.work / "mnt" / self.key

    def cache_dir(self) -> Path:
        return self.work / "cache" / self.key

    def fresh_cache(self) -> Path:
        d = self.cache_dir()
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        return d

    def spawn(self, target: Target, cache: Path, log: Path) -> tuple[Proc, Path]:
        raise NotImplementedError

    @contextlib.contextmanager
    def mounted(self, target: Target, cache: Path) -> Iterator[Mounted]:
        mnt = self.mnt
        self.last_exit = None
        fuse_unmount(mnt)
        if is_mount(mnt):
            raise BenchError(f"{mnt} is still mounted from before")
        mnt.mkdir(parents=True, exist_ok=True)
        log = self.work / "logs" / f"{self.key}.log"
        t0 = time.perf_counter()
        proc, root = self.spawn(target, cache, log)
        command = " ".join(proc.argv)
        if command not in self.commands:
            self.commands.append(command)
        try:
            deadline = time.monotonic() + MOUNT_TIMEOUT
            while not is_mount(mnt):
                if proc.poll() is not None:
                    raise BenchError(
                        f"{self.label} exited with {proc.poll()} before mounting:\n{tail(log)}"
                    )
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"{self.label}: no mount after {MOUNT_TIMEOUT:g} s:\n{tail(log)}"
                    )
                time.sleep(0.02)
            deadline = time.monotonic() + MOUNT_TIMEOUT
            while not root.is_dir():  # the first listing may take a moment
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise BenchError(f"{self.label}: {root} does not appear:\n{tail(log)}")
                time.sleep(0.05)
            self.mount_seconds.append(round(time.perf_counter() - t0, 2))
            yield Mounted(self, proc, mnt, root, command)
        finally:
            t1 = time.perf_counter()
            self.last_exit = proc.poll()
            fuse_unmount(mnt)
            if proc.popen is not None:
                try:
                    proc.popen.wait(timeout=15)
                except Exception:
                    pass
            proc.stop()
            fuse_unmount(mnt)
            self.unmount_seconds.append(round(time.perf_counter() - t1, 2))
            if is_mount(mnt):
                raise BenchError(f"{mnt} could not be unmounted")


@dataclass
class Fusefs(System):
    mount_opts: dict[str, object] = field(default_factory=dict)

    def spawn(self, target: Target, cache: Path, log: Path) -> tuple[Proc, Path]:
        cfg = self.work / f"{self.key}-{target.scheme}.toml"
        lines = []
        if self.mount_opts:
            lines += ["[mount]", *(f"{k} = {json.dumps(v)}" for k, v in self.mount_opts.items())]
        lines += [
            "[cache]",
            f"dir = {json.dumps(str(cache))}",
            "",
            "[koodrive]",
            f"url = {json.dumps(target.emulator_url)}",
            'auth = "token"',
            'token_env = "FUSEFS_KOODRIVE_TOKEN"',
            f"containers = [{{ id = {json.dumps(self.ds.container_id)} }}]",
            "",
        ]
        cfg.write_text("# written by scripts/bench\n" + "\n".join(lines))
        cfg.chmod(0o600)
        env = {
            **os.environ,
            "FUSEFS_KOODRIVE_TOKEN": self.ds.token,
            "SSL_CERT_FILE": str(target.ca),
            "CURL_CA_BUNDLE": str(target.ca),
            "REQUESTS_CA_BUNDLE": str(target.ca),
        }
        argv = [PY, "-m", "fusefs", "mount", "--foreground", "--config", str(cfg), str(self.mnt)]
        proc = Proc(self.key, argv, log, env=env).start()
        return proc, self.mnt / "koodrive" / self.ds.container_id


@dataclass
class Rclone(System):
    cache_mode: str = "off"

    def spawn(self, target: Target, cache: Path, log: Path) -> tuple[Proc, Path]:
        conf = self.work / "rclone.conf"
        conf.touch()
        argv = [
            "rclone",
            "mount",
            ":http:",
            str(self.mnt),
            "--http-url",
            target.peer_url,
            "--read-only",
            "--vfs-cache-mode",
            self.cache_mode,
            "--cache-dir",
            str(cache),
            "--config",
            str(conf),
            "--log-level",
            "NOTICE",
        ]
        if target.scheme == "https":
            argv += ["--ca-cert", str(target.ca)]
        return Proc(self.key, argv, log).start(), self.mnt


@dataclass
class Httpdirfs(System):
    def spawn(self, target: Target, cache: Path, log: Path) -> tuple[Proc, Path]:
        argv = ["httpdirfs", "-f", "--cache", "--cache-location", str(cache), "--no-range-check"]
        if target.scheme == "https":
            argv += ["--cacert", str(target.ca)]
        argv += [target.peer_url, str(self.mnt)]
        env = {**os.environ, "CURL_CA_BUNDLE": str(target.ca)}
        return Proc(self.key, argv, log, env=env).start(), self.mnt


ALL = ("fusefs", "fusefs-noxattr", "rclone-off", "rclone-full", "httpdirfs")
PEERS = ("rclone-off", "rclone-full", "httpdirfs")
FUSEFS = ("fusefs", "fusefs-noxattr")


def make_systems(keys: list[str], work: Path, ds: Dataset) -> list[System]:
    made: dict[str, System] = {
        "fusefs": Fusefs("fusefs", "fusefs", work, ds),
        "fusefs-noxattr": Fusefs(
            "fusefs-noxattr", "fusefs, xattrs = false", work, ds, mount_opts={"xattrs": False}
        ),
        "rclone-off": Rclone("rclone-off", "rclone mount, cache off", work, ds, cache_mode="off"),
        "rclone-full": Rclone(
            "rclone-full", "rclone mount, --vfs-cache-mode full", work, ds, cache_mode="full"
        ),
        "httpdirfs": Httpdirfs("httpdirfs", "httpdirfs --cache", work, ds),
    }
    return [made[k] for k in keys]
