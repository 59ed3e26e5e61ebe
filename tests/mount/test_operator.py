"""Operator-facing failures (issue 9, defect 7), each through the real CLI in a subprocess:
non-empty mountpoints, bad credentials, a dead mount after `kill -9`, two mounts on one cache.

Each asserts the exit code, the message and what is left afterwards: no mount, no process."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fusefs.testbed import demo_config
from tests.helpers.mounting import (
    SPAWNED_MOUNTS,
    Emulator,
    is_mounted,
    mounted,
    spawn_daemon,
    unmount,
    wait_for_mount,
)

pytestmark = pytest.mark.fuse


def fusefs(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fusefs", *args],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert lines[0].startswith("fusefs: error: ")
    return lines[0]


def processes_mentioning(text: str) -> list[int]:
    """Pids (not ours) whose command line mentions ``text``: daemons or emulators left behind."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmd:
            out.append(int(entry))
    return out


def wait_gone(pid: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        stat = Path(f"/proc/{pid}/stat").read_text(errors="replace")
        if stat.rsplit(")", 1)[1].split()[0] == "Z":  # a zombie of ours: exited
            return
        assert time.monotonic() < deadline, f"pid {pid} still runs"
        time.sleep(0.05)


def config(world: Path, url: str, workdir: Path, name: str, cache: Path) -> dict[str, str]:
    """Write ``<name>.toml``; the environment with its secrets (and a private log dir)."""
    secrets = demo_config(world, url, cache, workdir / f"{name}.toml")
    return {**os.environ, **secrets, "XDG_STATE_HOME": str(workdir / "state")}


def test_non_empty_mountpoint_is_refused_unless_allowed(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    mnt = workdir / "full"
    mnt.mkdir()
    (mnt / "keep.txt").write_text("mine")
    env = config(world_tiny, emulator.url, workdir, "c", workdir / "cache")
    cfg = str(workdir / "c.toml")
    for extra in ([], ["--foreground"]):  # the background start and the daemon alike
        msg = one_line_error(fusefs("mount", *extra, "--config", cfg, str(mnt), env=env))
        assert f"mountpoint {mnt} is not empty" in msg
        assert "'keep.txt'" in msg and "--allow-non-empty" in msg
        assert not is_mounted(mnt)
    assert not processes_mentioning(cfg)
    proc = spawn_daemon(Path(cfg), mnt, env, workdir / "c.log", "--allow-non-empty")
    try:
        wait_for_mount(proc, mnt, workdir / "c.log")
        assert sorted(os.listdir(mnt)) == ["enos", "iotda", "koodrive", "roma"]
    finally:
        assert unmount(proc, mnt) == 0
    assert (mnt / "keep.txt").read_text() == "mine"


def test_every_provider_rejected_refuses_with_the_reasons(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    mnt = workdir / "mnt"
    mnt.mkdir()
    SPAWNED_MOUNTS.add(mnt)
    env = config(world_tiny, emulator.url, workdir, "bad", workdir / "cache")
    good = dict(env)
    for name in ("FUSEFS_ENOS_APP_SECRET", "FUSEFS_KOODRIVE_TOKEN", "FUSEFS_IAM_PASSWORD"):
        env[name] = "wrong-" + env[name][:4]
    r = fusefs("mount", "--config", str(workdir / "bad.toml"), str(mnt), env=env)
    try:
        msg = one_line_error(r)
    finally:
        unmount(None, mnt)
    assert "no provider could authenticate, nothing mounted" in msg
    assert "enos: enos.token.get: status 1003" in msg
    assert "koodrive: koodrive.listFiles: HTTP 401" in msg
    assert "iotda: iam.token: IAM rejected user" in msg and "roma: iam.token" in msg
    for name in ("FUSEFS_ENOS_APP_SECRET", "FUSEFS_KOODRIVE_TOKEN", "FUSEFS_IAM_PASSWORD"):
        assert good[name] not in msg and env[name] not in msg
    assert r.stdout == ""
    assert not is_mounted(mnt)
    assert not processes_mentioning(str(workdir / "bad.toml"))


def test_one_provider_rejected_mounts_the_rest_and_says_so(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    mnt = workdir / "mnt"
    mnt.mkdir()
    SPAWNED_MOUNTS.add(mnt)
    env = config(world_tiny, emulator.url, workdir, "part", workdir / "cache")
    env["FUSEFS_KOODRIVE_TOKEN"] = "Bearer not-the-token"
    r = fusefs("mount", "--config", str(workdir / "part.toml"), str(mnt), env=env)
    pid = None
    try:
        assert r.returncode == 0, r.stderr
        found = re.search(r"mounted \S+ \(pid (\d+),", r.stdout)
        assert found, r.stdout
        pid = int(found.group(1))
        warnings = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(warnings) == 1, r.stderr
        assert warnings[0].startswith("fusefs: warning: koodrive is down: koodrive.listFiles: ")
        assert "/koodrive answers EACCES (Permission denied)" in warnings[0]
        with pytest.raises(PermissionError) as info:
            os.listdir(mnt / "koodrive")
        assert info.value.errno == errno.EACCES
        assert os.listdir(mnt / "enos") and os.listdir(mnt / "iotda" / "exports")
        log = next((workdir / "state" / "fusefs").glob("*mnt.log")).read_text()
        assert "ERROR fusefs.mount: koodrive is down" in log
    finally:
        u = fusefs("unmount", str(mnt))
        unmount(None, mnt)
    assert u.returncode == 0, u.stderr
    if pid is not None:
        wait_gone(pid)
    assert not is_mounted(mnt)
    assert not processes_mentioning(str(workdir / "part.toml"))


def test_dead_mount_after_kill_9_is_named_and_cleaned_up(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    mnt = workdir / "mnt"
    mnt.mkdir()
    env = config(world_tiny, emulator.url, workdir, "d", workdir / "cache")
    cfg = workdir / "d.toml"
    proc = spawn_daemon(cfg, mnt, env, workdir / "d.log")
    try:
        wait_for_mount(proc, mnt, workdir / "d.log")
        assert os.listdir(mnt / "enos")
        proc.kill()
        proc.wait()
        assert is_mounted(mnt)  # left dead on purpose (docs/architecture.md)
        for extra in ([], ["--foreground"]):
            msg = one_line_error(fusefs("mount", *extra, "--config", str(cfg), str(mnt), env=env))
            assert f"{mnt} holds a dead fusefs mount" in msg
            assert f"run `fusefs unmount {mnt}`" in msg and "fusermount3 -u" in msg
        u = fusefs("unmount", str(mnt))
        assert u.returncode == 0, u.stderr
        assert "cleaned up the dead mount" in u.stderr
        assert not is_mounted(mnt)
        # and the mountpoint (and the cache, whose lock died with the daemon) work again
        again = spawn_daemon(cfg, mnt, env, workdir / "d2.log")
        try:
            wait_for_mount(again, mnt, workdir / "d2.log")
            assert os.listdir(mnt / "enos")
        finally:
            assert unmount(again, mnt) == 0
    finally:
        unmount(proc, mnt)
    r = fusefs("unmount", str(mnt))
    assert "is not mounted" in one_line_error(r)
    assert not processes_mentioning(str(cfg))


def test_second_mount_on_one_cache_dir_is_refused(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    cache = workdir / "cache"
    with mounted(world_tiny, emulator.url, workdir, cache_dir=cache) as m:
        second = workdir / "second"
        second.mkdir()
        SPAWNED_MOUNTS.add(second)
        env = config(world_tiny, emulator.url, workdir, "second", cache)
        cfg = str(workdir / "second.toml")
        try:
            msg = one_line_error(fusefs("mount", "--config", cfg, str(second), env=env))
            fg = fusefs("mount", "--foreground", "--config", cfg, str(second), env=env)
        finally:
            unmount(None, second)
        assert f"cache dir {cache} is in use by the mount at {m.path} (pid {m.proc.pid})" in msg
        assert "give each mount its own [cache] dir" in msg
        assert fg.returncode == 2 and fg.stderr.strip().splitlines()[-1] == msg, fg.stderr
        assert not is_mounted(second)
        assert not processes_mentioning(cfg)
        assert os.listdir(m.path / "enos")  # the first mount is untouched
        os.kill(m.proc.pid, 0)
    # the lock went with the first daemon: the cache dir is free again
    env = config(world_tiny, emulator.url, workdir, "second", cache)
    proc = spawn_daemon(Path(cfg), second, env, workdir / "second.log")
    try:
        wait_for_mount(proc, second, workdir / "second.log")
    finally:
        assert unmount(proc, second) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])  # SIGHUP reloads (test_daemon_ops)
def test_daemon_signal_unmounts_cleanly(
    world_tiny: Path, emulator: Emulator, workdir: Path, sig: signal.Signals
) -> None:
    mnt = workdir / "mnt"
    mnt.mkdir()
    env = config(world_tiny, emulator.url, workdir, "s", workdir / "cache")
    proc = spawn_daemon(workdir / "s.toml", mnt, env, workdir / "s.log")
    try:
        wait_for_mount(proc, mnt, workdir / "s.log")
        proc.send_signal(sig)
        assert proc.wait(timeout=15) == 0
        assert not is_mounted(mnt)
        assert f"received {sig.name}, unmounting" in (workdir / "s.log").read_text()
    finally:
        unmount(proc, mnt)
