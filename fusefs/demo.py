"""`fusefs demo`: generate a world, start the emulator, mount it, unmount cleanly on Ctrl-C.

Also the helpers tests use to point a daemon at an emulator: ``demo_config`` writes the config
and returns the environment holding the secrets (secrets never go into argv or the config).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

ENV_NAMES = {
    "enos_key": "FUSEFS_ENOS_APP_KEY",
    "enos_secret": "FUSEFS_ENOS_APP_SECRET",
    "koodrive_token": "FUSEFS_KOODRIVE_TOKEN",
    "iam_password": "FUSEFS_IAM_PASSWORD",
}


DEMO_IOTDA_WINDOW = 2.0


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def demo_config(
    world_dir: Path,
    base_url: str,
    cache_dir: Path,
    config_path: Path,
    *,
    mount: Mapping[str, Any] | None = None,
    cache: Mapping[str, Any] | None = None,
    iotda: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Write a config naming everything in the world; return the env vars with its secrets."""
    world = json.loads((world_dir / "world.json").read_text())
    creds = world["credentials"]
    mount_opts = {"request_timeout": 60.0, "dir_ttl": 60.0, "log_level": "info", **(mount or {})}
    cache_opts = {"dir": str(cache_dir), "max_size": "4GiB", **(cache or {})}

    def table(opts: Mapping[str, Any]) -> list[str]:
        return [f"{k} = {json.dumps(v)}" for k, v in opts.items()]

    orgs = ", ".join(_toml_str(o["orgId"]) for o in world["enos"]["orgs"])
    containers = []
    for c in world["koodrive"]["containers"]:
        item = f"{{ id = {_toml_str(c['containerId'])}"
        if c.get("groupId"):
            item += f", group_id = {_toml_str(c['groupId'])}"
        containers.append(item + " }")
    iam = creds["iam"]
    roma_instances = []
    for inst in world["roma"]["instances"]:
        jobs = ", ".join(_toml_str(j["job_id"]) for j in inst["jobs"])
        roma_instances.append(f"{{ id = {_toml_str(inst['instanceId'])}, jobs = [{jobs}] }}")
    lines = [
        "# written by fusefs demo: the emulator's world, secrets in the environment",
        "[mount]",
        *table(mount_opts),
        "",
        "[cache]",
        *table(cache_opts),
        "",
        "[enos]",
        f"apigw_url = {_toml_str(base_url)}",
        f"app_key_env = {_toml_str(ENV_NAMES['enos_key'])}",
        f"app_secret_env = {_toml_str(ENV_NAMES['enos_secret'])}",
        f"orgs = [{orgs}]",
        "",
        "[koodrive]",
        f"url = {_toml_str(base_url)}",
        'auth = "token"',
        f"token_env = {_toml_str(ENV_NAMES['koodrive_token'])}",
        f"containers = [{', '.join(containers)}]",
        "",
        "[iam]",
        f"url = {_toml_str(base_url)}",
        f"user = {_toml_str(iam['user'])}",
        f"domain = {_toml_str(iam['domain'])}",
        f"project = {_toml_str(iam['project'])}",
        f"password_env = {_toml_str(ENV_NAMES['iam_password'])}",
        "",
        "[iotda]",
        f"url = {_toml_str(base_url)}",
        f"project_id = {_toml_str(world['iotda']['projectId'])}",
        f"instance_id = {_toml_str(world['iotda']['instanceId'])}",
        *table(iotda or {}),
        "",
        "[roma]",
        f"url = {_toml_str(base_url)}",
        f"project_id = {_toml_str(world['roma']['projectId'])}",
        f"instances = [{', '.join(roma_instances)}]",
        "",
    ]
    config_path.write_text("\n".join(lines))
    config_path.chmod(0o600)
    return {
        ENV_NAMES["enos_key"]: creds["enos"]["appKey"],
        ENV_NAMES["enos_secret"]: creds["enos"]["appSecret"],
        ENV_NAMES["koodrive_token"]: creds["koodrive"]["token"],
        ENV_NAMES["iam_password"]: iam["password"],
    }


@contextlib.contextmanager
def running_emulator(
    world_dir: Path,
    workdir: Path,
    *,
    faults: Path | None = None,
    log: Path | None = None,
    port: int = 0,
) -> Iterator[str]:
    """Start ``python -m fusefs.emulator`` on 127.0.0.1 (port 0); yield its base URL."""
    port_file = workdir / "emulator.port"
    port_file.unlink(missing_ok=True)
    argv = [
        sys.executable,
        "-m",
        "fusefs.emulator",
        "--world",
        str(world_dir),
        "--host",
        "127.0.0.1",
        "--port-file",
        str(port_file),
    ]
    if port:
        argv += ["--port", str(port)]
    if faults is not None:
        argv += ["--faults", str(faults)]
    out = open(log or workdir / "emulator.log", "ab")  # noqa: SIM115
    held = _STOPPER.hold()
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
    except BaseException:
        _STOPPER.release(held, raise_pending=False)
        out.close()
        raise
    try:
        _STOPPER.release(held)
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None:
                raise RuntimeError(f"emulator exited with {proc.returncode}; see {out.name}")
            if time.monotonic() > deadline:
                raise RuntimeError("emulator did not start within 30 s")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{int(port_file.read_text().strip())}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()


def _say(text: str, *, err: bool = False) -> None:
    """Print, but never fail: after SIGHUP (the terminal closed) writes to it fail with EIO,
    and the cleanup that follows must still run."""
    with contextlib.suppress(OSError, ValueError):
        print(text, file=sys.stderr if err else sys.stdout, flush=True)


def ensure_world(world_dir: Path, scale: str, seed: int = 1) -> None:
    if (world_dir / "world.json").exists():
        return
    from fusefs.emulator.world import generate

    _say(f"fusefs demo: generating the {scale} world in {world_dir} ...")
    generate(world_dir, seed, scale)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Stopper:
    """The demo's handler of Ctrl-C, SIGTERM and SIGHUP (the terminal closed): all stop it as
    Ctrl-C does (KeyboardInterrupt). While a child is being started (``deferred``) a signal is
    held, and raised by ``check`` once the child's cleanup is in place: a signal in between
    would leave the child running."""

    def __init__(self) -> None:
        self.armed = True
        self.pending = False

    def __call__(self, signum: int, frame: object) -> None:
        if not self.armed:
            self.pending = True
            return
        raise KeyboardInterrupt

    def hold(self) -> bool:
        """Hold signals from now on; returns what ``release`` needs."""
        armed, self.armed = self.armed, False
        return armed

    def release(self, armed: bool, *, raise_pending: bool = True) -> None:
        """Call first thing inside the ``try`` whose ``finally`` cleans up the child."""
        self.armed = armed
        if raise_pending and self.pending and armed:
            self.pending = False
            raise KeyboardInterrupt


_STOPPER = _Stopper()


def run_demo(mountpoint: Path, workdir: Path, *, scale: str = "demo") -> int:
    """Ctrl-C, SIGTERM and SIGHUP all stop the demo the same way: daemon (which unmounts),
    then the emulator; nothing is left running or mounted."""
    previous = {s: signal.getsignal(s) for s in _STOP_SIGNALS}
    _STOPPER.armed, _STOPPER.pending = True, False
    for s in _STOP_SIGNALS:
        signal.signal(s, _STOPPER)
    try:
        return _run_demo(mountpoint.absolute(), workdir.absolute(), scale)
    except KeyboardInterrupt:  # before anything was started
        _say("\nfusefs demo: stopped")
        return 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _ignore_stop_signals() -> None:
    """From here the cleanup runs to its end: a second Ctrl-C (or the SIGHUP that follows a
    SIGTERM) would abort it half-way."""
    for s in _STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def _run_demo(mountpoint: Path, workdir: Path, scale: str) -> int:
    from fusefs.cli import wait_for_daemon
    from fusefs.mount import MountError, check_mountpoint, mount_state

    workdir.mkdir(parents=True, exist_ok=True)
    mountpoint.mkdir(parents=True, exist_ok=True)
    try:
        check_mountpoint(mountpoint)
    except MountError as exc:
        _say(f"fusefs: error: {exc}", err=True)
        return 2
    world_dir = workdir / f"world-{scale}"
    ensure_world(world_dir, scale)
    # IoTDA allows one export download per 30 s; the demo shortens that (emulator and config
    # alike) so that `ls -l` of 20 exports does not take ten minutes.
    faults = workdir / "demo-faults.json"
    faults.write_text(json.dumps({"iotda_download_window": DEMO_IOTDA_WINDOW}))
    status = 0
    with running_emulator(world_dir, workdir, faults=faults) as base_url:
        config = workdir / "config.toml"
        secrets = demo_config(
            world_dir,
            base_url,
            workdir / "cache",
            config,
            iotda={"download_interval": DEMO_IOTDA_WINDOW},
        )
        env = {**os.environ, **secrets}
        log_path = workdir / "daemon.log"
        rfd, wfd = os.pipe()
        argv = [sys.executable, "-m", "fusefs", "mount", "--foreground", "--config", str(config)]
        argv += ["--status-fd", str(wfd), str(mountpoint)]
        held = _STOPPER.hold()
        try:
            with open(log_path, "ab") as out:
                daemon = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    env=env,
                    start_new_session=True,  # the terminal's signals reach the demo alone
                    pass_fds=(wfd,),
                )
        except BaseException:
            _STOPPER.release(held, raise_pending=False)
            os.close(rfd)
            raise
        finally:
            os.close(wfd)
        try:
            _STOPPER.release(held)
            started = wait_for_daemon(daemon, rfd, 60)
            if not started.mounted:
                why = started.error or f"see {log_path}"
                _say(f"fusefs: error: the mount failed: {why}", err=True)
                return 1
            for w in started.warnings:
                _say(f"fusefs demo: warning: {w}", err=True)
            rel = os.path.relpath(mountpoint)
            cli = Path(sys.executable).with_name("fusefs")
            fusefs = os.path.relpath(cli) if cli.exists() else f"{sys.executable} -m fusefs"
            _say(
                f"""
fusefs demo: the emulator listens on {base_url}; its clouds are mounted at {mountpoint}
  world:   {world_dir}   (expected view: {world_dir / "expected"})
  config:  {config}
  log:     {log_path}
  (IoTDA's one-download-per-30-s rule is shortened to {DEMO_IOTDA_WINDOW:g} s in the demo)

Try, in another terminal:
  ls {rel}/enos {rel}/koodrive {rel}/iotda/exports {rel}/roma
  ls -l {rel}/koodrive/*/
  find {rel} -type f | head
  diff -r {world_dir / "expected"} {rel} && echo identical
  {fusefs} info {rel}/iotda/exports/*.zip | head -20
  {fusefs} prefetch {rel}/iotda/exports   # sizes show 0 until each export is fetched
  unzip -l "$(ls {rel}/iotda/exports/*.zip | head -1)"

Press Ctrl-C (or close this terminal) to unmount and stop."""
            )
            while daemon.poll() is None:
                time.sleep(0.5)
            _say(f"fusefs demo: the daemon exited with {daemon.returncode}; see {log_path}")
            status = 1
        except KeyboardInterrupt:
            pass  # Ctrl-C, SIGTERM, SIGHUP, whenever they come (also during start-up)
        finally:
            _ignore_stop_signals()
            _say("\nfusefs demo: unmounting ...")
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)  # the daemon unmounts, then exits
            try:
                daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
            if mount_state(mountpoint) is not None and shutil.which("fusermount3"):
                subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
    if mount_state(mountpoint) is not None:
        _say(f"fusefs: error: {mountpoint} is still mounted: run fusefs unmount", err=True)
        return 1
    _say("fusefs demo: stopped; nothing left mounted")
    return status
