"""The daemon as an operator runs it (issue 10), each through a real mount: other users
(allow_other, uid/gid, modes), `df`, systemd's notify protocol, SIGHUP (reload, log reopen),
stop signals at start, the metrics endpoint, and `fusefs status`."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fusefs.testbed import ENV_NAMES, demo_config
from tests.helpers.mounting import (
    FAST_IOTDA_WINDOW,
    Emulator,
    Mount,
    is_mounted,
    spawn_daemon,
    unmount,
    wait_for_mount,
)
from tests.mount.test_mount import manifest, md5

pytestmark = pytest.mark.fuse

NOBODY = 65534


def fusefs(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fusefs", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def write_config(
    world: Path, url: str, workdir: Path, *, mount: dict[str, Any] | None = None, extra: str = ""
) -> tuple[Path, dict[str, str]]:
    """``workdir/c.toml`` for the world (``extra`` appended); the environment with its secrets."""
    config = workdir / "c.toml"
    secrets = demo_config(
        world,
        url,
        workdir / "cache",
        config,
        mount={"request_timeout": 30.0, "log_level": "debug", **(mount or {})},
        cache={"max_size": "64MiB"},
        iotda={"download_interval": FAST_IOTDA_WINDOW, "background_fetch": False},
    )
    if extra:
        config.write_text(config.read_text() + "\n" + extra + "\n")
    return config, {**os.environ, **secrets}


@contextlib.contextmanager
def daemon(
    world: Path,
    url: str,
    workdir: Path,
    *,
    mount: dict[str, Any] | None = None,
    extra: str = "",
    env: dict[str, str] | None = None,
) -> Iterator[Mount]:
    config, secrets = write_config(world, url, workdir, mount=mount, extra=extra)
    mnt = workdir / "mnt"
    mnt.mkdir(exist_ok=True)
    log = workdir / "daemon.log"
    proc = spawn_daemon(config, mnt, {**secrets, **(env or {})}, log)
    try:
        wait_for_mount(proc, mnt, log)
        yield Mount(mnt, proc, log, config, secrets)
    finally:
        rc = unmount(proc, mnt)
    assert rc == 0, f"daemon exited with {rc}:\n{log.read_text(errors='replace')[-4000:]}"


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A work dir other users can reach the mountpoint through (pytest's tmp dirs are 0700)."""
    d = Path(tempfile.mkdtemp(prefix="fusefs-shared-", dir="/tmp"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def a_file(world: Path, mnt: Path) -> tuple[Path, dict[str, Any]]:
    f = next(f for f in manifest(world) if f["provider"] == "koodrive" and f["size"] > 0)
    return mnt / f["path"], f


def read_as(uid: int, path: Path) -> subprocess.CompletedProcess[bytes]:
    """`cat PATH` as another user (gid and groups of that user too)."""
    return subprocess.run(
        ["cat", str(path)], capture_output=True, user=uid, group=uid, extra_groups=[], timeout=30
    )


# -- 1. other users ---------------------------------------------------------------------------
@pytest.mark.skipif(os.getuid() != 0, reason="switching to another uid needs root")
def test_other_users_read_only_with_allow_other(
    world_tiny: Path, emulator: Emulator, shared_dir: Path
) -> None:
    with daemon(world_tiny, emulator.url, shared_dir) as m:
        path, f = a_file(world_tiny, m.path)
        assert path.read_bytes()[:1] or f["size"] == 0  # the mounting user reads it
        r = read_as(NOBODY, path)
        assert r.returncode != 0 and b"Permission denied" in r.stderr, r
        assert "allow_other" not in _mount_options(m.path)
    shutil.rmtree(shared_dir / "cache", ignore_errors=True)
    with daemon(world_tiny, emulator.url, shared_dir, mount={"allow_other": True}) as m:
        path, f = a_file(world_tiny, m.path)
        opts = _mount_options(m.path)
        assert "allow_other" in opts and "default_permissions" in opts
        r = read_as(NOBODY, path)
        assert r.returncode == 0, r.stderr
        assert hashlib.md5(r.stdout).hexdigest() == f["md5"]
        st = path.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 0, 0o444)


@pytest.mark.skipif(os.getuid() != 0, reason="switching to another uid needs root")
def test_default_permissions_apply_the_modes_and_owner_shown(
    world_tiny: Path, emulator: Emulator, shared_dir: Path
) -> None:
    opts = {"allow_other": True, "uid": NOBODY, "gid": NOBODY, "file_mode": "0400"}
    with daemon(world_tiny, emulator.url, shared_dir, mount=opts) as m:
        path, f = a_file(world_tiny, m.path)
        st = path.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (NOBODY, NOBODY, 0o400)
        assert (path.parent.stat().st_mode & 0o777) == 0o555
        owner = read_as(NOBODY, path)
        assert owner.returncode == 0 and hashlib.md5(owner.stdout).hexdigest() == f["md5"]
        other = read_as(1, path)  # "daemon": neither the owner nor in its group
        assert other.returncode != 0 and b"Permission denied" in other.stderr, other


def _mount_options(mnt: Path) -> set[str]:
    real = os.path.realpath(mnt)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        if fields[4] == real:
            sep = fields.index("-")
            return set(fields[5].split(",")) | set(fields[sep + 3].split(","))
    raise AssertionError(f"{mnt} is not mounted")


# -- 2. df ------------------------------------------------------------------------------------
def test_df_shows_the_cache_capacity_use_and_free(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    cap = 64 << 20
    with daemon(world_tiny, emulator.url, workdir) as m:
        before = os.statvfs(m.path)
        assert before.f_blocks * before.f_frsize == cap
        assert before.f_bavail == before.f_bfree == before.f_blocks  # nothing cached yet
        assert before.f_ffree > 0 and before.f_files > before.f_ffree
        read = 0
        for f in manifest(world_tiny):
            if f["provider"] == "koodrive" and f["size"] > 0:
                (m.path / f["path"]).read_bytes()
                read += f["size"]
            if read > 2 << 20:
                break
        deadline = time.monotonic() + 10
        while True:  # blocks are accounted once written to disk
            after = os.statvfs(m.path)
            if after.f_bfree < before.f_bfree or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert after.f_blocks == before.f_blocks
        assert after.f_bfree < before.f_bfree
        used = (after.f_blocks - after.f_bfree) * after.f_frsize
        assert 0 < used <= cap
        r = subprocess.run(["df", "-P", str(m.path)], capture_output=True, text=True, check=True)
        size_k, used_k, avail_k, pct = r.stdout.splitlines()[1].split()[1:5]
        assert int(size_k) == cap // 1024 and int(used_k) > 0 and int(avail_k) > 0
        assert pct != "100%"
        r = subprocess.run(["df", "-i", str(m.path)], capture_output=True, text=True, check=True)
        assert r.stdout.splitlines()[1].split()[4] in ("0%", "1%"), r.stdout


# -- 3. systemd notify, SIGHUP, stop signals --------------------------------------------------
@contextlib.contextmanager
def notify_socket(workdir: Path) -> Iterator[socket.socket]:
    path = workdir / "notify.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(30)
    try:
        yield s
    finally:
        s.close()


def messages_until(s: socket.socket, field: str) -> list[dict[str, str]]:
    """Notify datagrams (as dicts) up to the first that carries ``field`` (e.g. READY)."""
    out = []
    while True:
        data = s.recv(4096).decode()
        msg = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
        out.append(msg)
        if field in msg:
            return out


def test_systemd_notify_ready_status_and_stopping(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    with notify_socket(workdir) as s:
        env = {"NOTIFY_SOCKET": str(workdir / "notify.sock")}
        with daemon(world_tiny, emulator.url, workdir, env=env) as m:
            (ready,) = messages_until(s, "READY")
            assert ready["READY"] == "1"
            assert ready["STATUS"] == f"mounted at {m.path}; 4 providers, 0 down"
            assert os.listdir(m.path)  # it answered before READY: it answers now
            m.proc.send_signal(signal.SIGTERM)
            assert m.proc.wait(timeout=15) == 0
            stopping = messages_until(s, "STOPPING")[-1]
            assert stopping["STOPPING"] == "1"
            assert not is_mounted(m.path)


def test_systemd_status_counts_a_provider_down(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    with notify_socket(workdir) as s:
        env = {"NOTIFY_SOCKET": str(workdir / "notify.sock"), ENV_NAMES["koodrive_token"]: "bad"}
        with daemon(world_tiny, emulator.url, workdir, env=env) as m:
            (ready,) = messages_until(s, "READY")
            assert ready["STATUS"] == f"mounted at {m.path}; 4 providers, 1 down"
            m.proc.send_signal(signal.SIGHUP)  # a reload sends the status line again
            assert messages_until(s, "STATUS")[-1]["STATUS"] == ready["STATUS"]


def test_sighup_reloads_the_config_and_reopens_the_log(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    log_file = workdir / "fusefs.log"
    opts = {"log_file": str(log_file), "log_level": "info", "dir_ttl": 60.0}
    with daemon(world_tiny, emulator.url, workdir, mount=opts) as m:
        assert "mounted" in log_file.read_text()
        # logrotate: the file is moved away, SIGHUP makes the daemon open a new one
        log_file.rename(workdir / "fusefs.log.1")
        text = m.config.read_text()
        m.config.write_text(
            text.replace("dir_ttl = 60.0", "dir_ttl = 5.0")
            .replace('log_level = "info"', 'log_level = "warning"')
            .replace('max_size = "64MiB"', 'max_size = "32MiB"')
        )
        m.proc.send_signal(signal.SIGHUP)
        new_log = _wait_for_text(log_file, "config reloaded")
        assert "dir_ttl 60 -> 5" in new_log and "log_level info -> warning" in new_log
        assert "takes effect at the next mount: [cache] max_size" in new_log
        assert is_mounted(m.path) and os.listdir(m.path)
        assert "received SIGHUP" in (workdir / "fusefs.log.1").read_text()
        # a config that no longer parses: logged, ignored, still mounted
        m.config.write_text("[mount\nbroken")
        m.proc.send_signal(signal.SIGHUP)
        broken = _wait_for_text(log_file, "no longer loads")
        assert "keeping the running one" in broken
        assert m.proc.poll() is None and is_mounted(m.path) and os.listdir(m.path / "koodrive")
        # SIGTERM still unmounts cleanly (not logged: the level is "warning" now)
        m.proc.send_signal(signal.SIGTERM)
        assert m.proc.wait(timeout=15) == 0
        assert not is_mounted(m.path)
        assert "received SIGTERM" not in log_file.read_text()


def _wait_for_text(path: Path, text: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while True:
        content = path.read_text(errors="replace") if path.exists() else ""
        if text in content:
            return content
        assert time.monotonic() < deadline, f"{text!r} not in {path}:\n{content[-3000:]}"
        time.sleep(0.05)


@pytest.mark.parametrize("delay", [0.0, 0.3, 0.8, 1.5])
def test_a_stop_signal_while_starting_exits_cleanly(
    world_tiny: Path, emulator: Emulator, workdir: Path, delay: float
) -> None:
    """SIGTERM at any moment of the start (checks, cache, just after pyfuse3.init): the daemon
    exits cleanly, by stopping the start or by unmounting, and leaves nothing mounted."""
    config, env = write_config(world_tiny, emulator.url, workdir)
    mnt = workdir / "mnt"
    mnt.mkdir()
    log = workdir / "d.log"
    proc = spawn_daemon(config, mnt, env, log)
    try:
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=20)
        text = log.read_text(errors="replace")
        assert "Traceback" not in text and "Nursery is closed" not in text, text[-3000:]
        if rc == -signal.SIGTERM:  # before Python set up its handlers: nothing to undo yet
            assert "mounted" not in text, text[-3000:]
        elif "stopped by SIGTERM while starting" in text:
            assert rc == 2
        else:  # it came after the mount: an ordinary unmount
            assert rc == 0 and ("received SIGTERM" in text or "unmounted" in text), text[-3000:]
        assert not is_mounted(mnt)
    finally:
        unmount(proc, mnt)


def test_a_stop_signal_during_the_start_checks_stops_the_start(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    emulator.set_faults({"rules": [{"route": "iam.token", "kind": "latency", "seconds": 3}]})
    config, env = write_config(world_tiny, emulator.url, workdir)
    mnt = workdir / "mnt"
    mnt.mkdir()
    log = workdir / "d.log"
    proc = spawn_daemon(config, mnt, env, log)
    try:
        _wait_for_text(log, "iam.token")  # the checks are under way (debug log)
        proc.send_signal(signal.SIGHUP)  # not a stop
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 2
        text = log.read_text()
        assert "received SIGHUP while starting: ignored" in text
        assert "stopped by SIGTERM while starting" in text and "Traceback" not in text
        assert not is_mounted(mnt)
    finally:
        unmount(proc, mnt)


async def test_a_stop_signal_after_the_checks_stops_before_the_mount() -> None:
    """Between the start checks and pyfuse3.init (the cache, the control socket start): the
    stop is remembered and the start ends right before the mount, which never happens."""
    import trio

    from fusefs.control import DaemonState
    from fusefs.mount import MountError, Reloader, _Lifecycle

    tree: Any = types.SimpleNamespace(listing_errors={})
    cfg: Any = None
    life = _Lifecycle(Path("/mnt/x"), Reloader(cfg, None, tree), DaemonState(Path("/mnt/x")))
    send, receive = trio.open_memory_channel[int](4)
    async with trio.open_nursery() as nursery:
        await nursery.start(life.run, receive)
        await send.send(signal.SIGHUP)
        await send.send(signal.SIGTERM)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(MountError, match="stopped by SIGTERM while starting"):
            life.stop_before_mount()
        nursery.cancel_scope.cancel()


def test_a_stop_signal_while_the_cache_starts_ends_the_start_unmounted(
    world_tiny: Path, emulator: Emulator, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process: SIGTERM while the control socket starts (after the checks, before
    pyfuse3.init): run_mount raises MountError itself (not in an ExceptionGroup), no init."""
    import pyfuse3
    import trio

    from fusefs import mount
    from fusefs.control import ControlServer
    from fusefs.providers.registry import load_config

    config, env = write_config(world_tiny, emulator.url, workdir)
    cfg = load_config(config, env)
    mnt = workdir / "mnt"
    mnt.mkdir()
    start_control = ControlServer.run

    async def control_run(self: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        await trio.sleep(0.2)  # the signal task takes it meanwhile
        await start_control(self, task_status=task_status)

    def no_init(*args: Any) -> None:
        raise AssertionError("pyfuse3.init was called")

    monkeypatch.setattr(ControlServer, "run", control_run)
    monkeypatch.setattr(pyfuse3, "init", no_init)
    umask = os.umask(0o022)
    try:
        with pytest.raises(mount.MountError, match="stopped by SIGTERM while starting"):
            trio.run(functools.partial(mount.run_mount, cfg, mnt, offline=True))
    finally:
        os.umask(umask)
    assert not is_mounted(mnt)


def test_sighup_while_starting_does_not_stop_it(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    config, env = write_config(world_tiny, emulator.url, workdir)
    mnt = workdir / "mnt"
    mnt.mkdir()
    log = workdir / "d.log"
    emulator.set_faults({"rules": [{"route": "iam.token", "kind": "latency", "seconds": 1}]})
    proc = spawn_daemon(config, mnt, env, log)
    try:
        _wait_for_text(log, "iam.token")  # the checks are under way (before: SIGHUP's default)
        proc.send_signal(signal.SIGHUP)
        wait_for_mount(proc, mnt, log)
        assert os.listdir(mnt)
        assert "received SIGHUP while starting: ignored" in log.read_text()
    finally:
        assert unmount(proc, mnt) == 0


# -- 4. metrics -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(url: str) -> dict[str, float]:
    """Prometheus text -> {"name{labels}": value}."""
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(
        v
        for k, v in samples.items()
        if re.match(rf"{re.escape(name)}(\{{|$)", k) and all(w in k for w in want)
    )


def test_metrics_endpoint_counts_reads_and_cache_figures(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    extra = f'[metrics]\naddress = "127.0.0.1:{port}"'
    with daemon(world_tiny, emulator.url, workdir, extra=extra) as m:
        assert f"metrics at {url}" in m.log_text()
        first = scrape(url)
        assert total(first, "fusefs_cache_max_bytes") > 0
        emulator.reset_stats()
        files = [f for f in manifest(world_tiny) if f["provider"] == "koodrive" and f["size"]][:3]
        for f in files:
            assert md5(m.path / f["path"]) == f["md5"]
        cold = scrape(url)
        assert total(cold, "fusefs_cache_misses_total") > total(first, "fusefs_cache_misses_total")
        assert total(cold, "fusefs_read_seconds_count") >= len(files)
        assert total(cold, "fusefs_cache_fetched_bytes_total") >= sum(f["size"] for f in files)
        # again, from the block cache (the kernel's page cache dropped first)
        subprocess.run(["sh", "-c", "echo 1 > /proc/sys/vm/drop_caches"], check=False)
        for f in files:
            (m.path / f["path"]).read_bytes()
        warm = scrape(url)
        assert total(warm, "fusefs_cache_hits_total") > total(cold, "fusefs_cache_hits_total")
        # the providers' request counters agree with what the emulator served, per provider
        # (read-ahead may still be under way: until both settle)
        deadline = time.monotonic() + 10
        while True:
            now, emu = scrape(url), emulator.stats()
            served = {k.split(".")[0] for k in emu}
            recorded = {
                p: total(now, "fusefs_requests_total", provider=p)
                - total(first, "fusefs_requests_total", provider=p)
                for p in served
            }
            counted = {p: sum(v for k, v in emu.items() if k.split(".")[0] == p) for p in served}
            if recorded == counted or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert "koodrive" in served and recorded == counted, (recorded, counted)
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)  # closed with the mount


def test_metrics_address_in_use_is_a_start_error(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        config, env = write_config(
            world_tiny, emulator.url, workdir, extra=f'[metrics]\naddress = "127.0.0.1:{port}"'
        )
        mnt = workdir / "mnt"
        mnt.mkdir()
        r = fusefs("mount", "--foreground", "--config", str(config), str(mnt), env=env)
        assert r.returncode == 2, r.stderr
        assert f"cannot serve metrics on 127.0.0.1:{port}" in r.stderr
        assert not is_mounted(mnt)


# -- 6. status --------------------------------------------------------------------------------
def test_status_names_each_provider_and_the_cache(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    with daemon(world_tiny, emulator.url, workdir) as m:
        path, _ = a_file(world_tiny, m.path)
        path.read_bytes()
        r = fusefs("status", str(m.path))
        assert r.returncode == 0, r.stderr
        for name in ("enos", "koodrive", "iotda", "roma"):
            assert name in r.stdout
        assert "hit rate" in r.stdout and "64.0 MiB" in r.stdout and "up" in r.stdout
        j = fusefs("status", "--json", str(m.path))
        st = json.loads(j.stdout)
        assert {p["name"]: p["state"] for p in st["providers"]} == dict.fromkeys(
            ("enos", "koodrive", "iotda", "roma"), "up"
        )
        assert st["cache"]["max_bytes"] == 64 << 20 and st["cache"]["misses"] >= 1
        iotda = next(p for p in st["providers"] if p["name"] == "iotda")
        assert iotda["queue"]["interval"] == FAST_IOTDA_WINDOW
        # the tokens the start checks fetched: their expiry, in the future (wall clock)
        for p in st["providers"]:
            if p["name"] != "koodrive":  # a fixed token: nothing expires
                assert p["token_expires"] > time.time(), p


def test_status_shows_a_provider_down_and_the_last_warnings(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    env = {ENV_NAMES["koodrive_token"]: "wrong-token"}
    with daemon(world_tiny, emulator.url, workdir, env=env) as m:
        r = fusefs("status", str(m.path))
        assert r.returncode == 1, r.stderr  # not every provider is up
        assert "down" in r.stdout and "Last warnings" in r.stdout
        st = json.loads(fusefs("status", "--json", str(m.path)).stdout)
        states = {p["name"]: p["state"] for p in st["providers"]}
        assert states["koodrive"] == "down" and states["enos"] == "up", states
        assert any("koodrive is down" in e["message"] for e in st["last_errors"])
