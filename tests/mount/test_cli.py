"""What a user sees when something is wrong: one line that says what to fix, non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fusefs.systemd import escape_path
from fusefs.testbed import demo_config
from tests.helpers.mounting import Emulator, mounted, spawn_daemon, unmount, wait_for_mount


def fusefs(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fusefs", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def test_missing_mountpoint(world_tiny: Path, workdir: Path) -> None:
    env = {
        **os.environ,
        **demo_config(world_tiny, "http://127.0.0.1:9", workdir / "c", workdir / "c.toml"),
    }
    msg = one_line_error(
        fusefs(
            "mount",
            "--foreground",
            "--config",
            str(workdir / "c.toml"),
            str(workdir / "nope"),
            env=env,
        )
    )
    assert "does not exist" in msg


def test_missing_config_and_bad_config(workdir: Path) -> None:
    (workdir / "mnt").mkdir()
    msg = one_line_error(
        fusefs("mount", "--config", str(workdir / "none.toml"), str(workdir / "mnt"))
    )
    assert "none.toml" in msg
    bad = workdir / "bad.toml"
    bad.write_text("[mount]\ndir_ttl = 0\n")
    bad.chmod(0o600)
    msg = one_line_error(fusefs("mount", "--config", str(bad), str(workdir / "mnt")))
    assert "dir_ttl" in msg
    bad.write_text("[mount\n")
    msg = one_line_error(fusefs("mount", "--config", str(bad), str(workdir / "mnt")))
    assert "bad.toml" in msg


def test_missing_secret_names_the_variable(world_tiny: Path, workdir: Path) -> None:
    secrets = demo_config(world_tiny, "http://127.0.0.1:9", workdir / "c", workdir / "c.toml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUSEFS_")}
    env.update(secrets)
    del env["FUSEFS_IAM_PASSWORD"]
    (workdir / "mnt").mkdir()
    msg = one_line_error(
        fusefs("mount", "--config", str(workdir / "c.toml"), str(workdir / "mnt"), env=env)
    )
    assert "FUSEFS_IAM_PASSWORD" in msg
    # the secrets never appear in what the user sees
    for value in secrets.values():
        assert value not in msg


@pytest.mark.fuse
def test_busy_mountpoint(world_tiny: Path, emulator: Emulator, workdir: Path) -> None:
    with mounted(world_tiny, emulator.url, workdir) as m:
        r = fusefs("mount", "--foreground", "--config", str(m.config), str(m.path), env=m.env)
        assert "already" in one_line_error(r)
        # and unmount through the CLI works (the fixture then finds nothing to do)
    r = fusefs("unmount", str(workdir / "mnt"))
    assert r.returncode != 0  # not mounted any more: a clear error, not a crash
    assert "Traceback" not in r.stderr


@pytest.mark.fuse
def test_background_mount_and_unmount(world_tiny: Path, emulator: Emulator, workdir: Path) -> None:
    mnt = workdir / "bg"
    mnt.mkdir()
    secrets = demo_config(world_tiny, emulator.url, workdir / "cache", workdir / "bg.toml")
    env = {**os.environ, **secrets, "XDG_STATE_HOME": str(workdir / "state")}
    r = fusefs("mount", "--config", str(workdir / "bg.toml"), str(mnt), env=env)
    try:
        assert r.returncode == 0, r.stderr
        assert os.path.ismount(mnt)
        assert os.listdir(mnt / "koodrive")
    finally:
        u = fusefs("unmount", str(mnt))
    assert u.returncode == 0, u.stderr
    assert not os.path.ismount(mnt)
    # named after the whole mountpoint, as systemd names units: no two mounts share one
    log = (workdir / "state" / "fusefs" / f"{escape_path(mnt)}.log").read_text()
    for value in secrets.values():
        assert value not in log


@pytest.mark.fuse
def test_helper_style_call_as_mount_fuse_makes_it(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    """/sbin/mount.fuse runs `fusefs CONFIG MOUNTPOINT -o rw,...,dev,suid`: it backgrounds the
    daemon and returns once mounted, quietly; unknown options are refused by name."""
    mnt = workdir / "helper"
    mnt.mkdir()
    cfg = workdir / "helper.toml"
    secrets = demo_config(world_tiny, emulator.url, workdir / "cache", cfg)
    env = {**os.environ, **secrets, "XDG_STATE_HOME": str(workdir / "state")}
    r = fusefs(str(cfg), str(mnt), "-o", "rw,bogus,dev,suid", env=env)
    assert r.returncode == 32 and "unknown mount option: bogus" in one_line_error(r)
    r = fusefs(str(cfg), str(mnt), "-o", "rw,dir_ttl=5,dev,suid", env=env)
    try:
        assert r.returncode == 0, r.stderr
        assert r.stdout == "" and os.listdir(mnt / "koodrive")
    finally:
        u = fusefs("unmount", str(mnt))
    assert u.returncode == 0, u.stderr


@pytest.mark.fuse
def test_roma_export_job_appears_in_the_mount(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    import json
    import time
    import zipfile

    world = json.loads((world_tiny / "world.json").read_text())
    instance = world["roma"]["instances"][0]["instanceId"]
    cfg = workdir / "roma.toml"
    secrets = demo_config(world_tiny, emulator.url, workdir / "cache", cfg)
    env = {**os.environ, **secrets}
    r = fusefs("roma", "export", instance, "--config", str(cfg), "--app", "app-1", env=env)
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip()
    assert job and "add it to `jobs`" in r.stderr
    # the user adds the job to the config, as the command says
    cfg.write_text(cfg.read_text().replace("jobs = [", f'jobs = ["{job}", ', 1))
    time.sleep(1.5)  # the emulator finishes export jobs after ~1 s
    mnt = workdir / "rmnt"
    mnt.mkdir()
    proc = spawn_daemon(cfg, mnt, env, workdir / "roma.log")
    try:
        wait_for_mount(proc, mnt, workdir / "roma.log")
        archives = mnt / "roma" / instance / "archives"
        names = os.listdir(archives)
        known = [j for j in world["roma"]["instances"][0]["jobs"] if j.get("archive_id")]
        assert len(names) == len(known) + 1  # the world's archives and the new job's
        fresh = [n for n in names if zipfile.is_zipfile(archives / n)]
        assert len(fresh) == len(names)
    finally:
        assert unmount(proc, mnt) == 0
    r = fusefs("roma", "export", instance, "--config", str(workdir / "none.toml"))
    assert "none.toml" in one_line_error(r)
