"""What a daemon runs against on this machine: the emulator in a subprocess
(``start_emulator``, ``running_emulator``) and a config naming everything in its world
(``demo_config``). Used by ``fusefs demo`` and the tests; secrets never go into argv or the
config, they travel in the environment (``ENV_NAMES``)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fusefs.daemon import die_with_this_process

ENV_NAMES = {
    "enos_key": "FUSEFS_ENOS_APP_KEY",
    "enos_secret": "FUSEFS_ENOS_APP_SECRET",
    "koodrive_token": "FUSEFS_KOODRIVE_TOKEN",
    "iam_password": "FUSEFS_IAM_PASSWORD",
}

EMULATOR_START_TIMEOUT = 30.0


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


class EmulatorProcess:
    """``python -m fusefs.emulator`` on 127.0.0.1, started by ``start_emulator``."""

    def __init__(self, proc: subprocess.Popen[bytes], port_file: Path, log: Path) -> None:
        self.proc = proc
        self.port_file = port_file
        self.log = log

    def wait_url(self, timeout: float = EMULATOR_START_TIMEOUT) -> str:
        """Its base URL, once it listens (it writes its port file then)."""
        deadline = time.monotonic() + timeout
        while not (self.port_file.exists() and self.port_file.read_text().strip()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"emulator exited with {self.proc.returncode}; see {self.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"emulator did not start within {timeout:.0f} s")
            time.sleep(0.05)
        return f"http://127.0.0.1:{int(self.port_file.read_text().strip())}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_emulator(
    world_dir: Path,
    workdir: Path,
    *,
    faults: Path | None = None,
    log: Path | None = None,
    port: int = 0,
    die_with_parent: bool = False,
) -> EmulatorProcess:
    """Start the emulator of ``world_dir`` (port 0: any free one), its output appended to
    ``log`` (default ``workdir/emulator.log``); ``wait_url`` next. ``die_with_parent``: see
    ``fusefs.daemon.die_with_this_process``."""
    port_file = workdir / "emulator.port"
    port_file.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "fusefs.emulator", "--world", str(world_dir)]
    argv += ["--host", "127.0.0.1", "--port-file", str(port_file)]
    if port:
        argv += ["--port", str(port)]
    if faults is not None:
        argv += ["--faults", str(faults)]
    log = log or workdir / "emulator.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            preexec_fn=die_with_this_process() if die_with_parent else None,
        )
    return EmulatorProcess(proc, port_file, log)


@contextlib.contextmanager
def running_emulator(
    world_dir: Path,
    workdir: Path,
    *,
    faults: Path | None = None,
    log: Path | None = None,
    port: int = 0,
) -> Iterator[str]:
    """The emulator of ``world_dir`` while the block runs; yields its base URL."""
    emulator = start_emulator(world_dir, workdir, faults=faults, log=log, port=port)
    try:
        yield emulator.wait_url()
    finally:
        emulator.stop()
