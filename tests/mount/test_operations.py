"""docs/operations.md, run: mount(8) and fstab, the mount.fusefs helper, -o options and flags,
other users, systemd, config check, logs. Every command of its ``sh`` blocks is run here
(``test_every_command_in_the_docs_is_run``).

mount(8) clears PATH before it runs /sbin/mount.fuse, which finds ``fusefs`` in /bin/sh's default
path only. So that nothing outside the test changes, the mount(8) tests run in a private mount
namespace (``unshare -m``): there a tmpfs covers /mnt (for the docs' /mnt/clouds), the test's
directories cover /usr/local/sbin, /etc/systemd/system and /etc/fstab, and the docs' commands
(``ln -s ... /usr/local/sbin/fusefs``, ``mount /mnt/clouds``) run as written. What a test leaves
running in a namespace is ended by pid at the end."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fusefs import systemd
from fusefs.testbed import demo_config
from tests.helpers.mounting import Emulator, is_mounted, unmount

pytestmark = pytest.mark.fuse

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "operations.md"
VENV_BIN = Path(sys.executable).parent
# need a running systemd (PID 1): the unit they start is run here by its ExecStart line instead
NOT_RUN_HERE = ("systemctl ", "journalctl ")
# the docs' paths → the test's
CONFIG = "/etc/fusefs/config.toml"
ENV_FILE = "/etc/fusefs/fusefs.env"
FSTAB_NEW = "/etc/fstab.new"
VENV = "/opt/fusefs/.venv"
MNT = "/mnt/clouds"


def doc_commands() -> list[str]:
    """The command lines of the ``sh`` blocks of docs/operations.md."""
    blocks = re.findall(r"^```sh\n(.*?)^```", DOC.read_text(), re.MULTILINE | re.DOTALL)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def fstab_line() -> str:
    m = re.search(r"^```text\n(/etc/fusefs/config\.toml.*?)\n```", DOC.read_text(), re.M)
    assert m is not None, "no fstab line in docs/operations.md"
    return m.group(1)


def doc(prefix: str) -> str:
    """The one command of the docs that is ``prefix`` or starts with it, exactly as written
    (a command the docs repeat counts once)."""
    commands = set(doc_commands())
    if prefix in commands:
        return prefix
    found = [c for c in commands if c.startswith(prefix)]
    assert len(found) == 1, (prefix, found)
    return found[0]


def test_every_command_in_the_docs_is_run() -> None:
    used = re.findall(r'\bdoc\(\s*"([^"]+)"', Path(__file__).read_text())
    missing = [
        c
        for c in doc_commands()
        if not c.startswith(NOT_RUN_HERE) and not any(c.startswith(u) for u in used)
    ]
    assert not missing, f"docs/operations.md commands no test runs: {missing}"
    for prefix in used:
        doc(prefix)  # still in the docs, and one command only


class Setup:
    """A config naming the emulator's world, its secrets, and the docs' paths replaced."""

    def __init__(self, world: Path, emulator: Emulator, workdir: Path) -> None:
        self.work = workdir
        self.config = workdir / "config.toml"
        self.secrets = demo_config(world, emulator.url, workdir / "cache", self.config)
        # the docs' metrics address, on a port free here
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.metrics = f"127.0.0.1:{probe.getsockname()[1]}"
        with self.config.open("a") as f:
            f.write(f'\n[metrics]\naddress = "{self.metrics}"\n')
        self.env_file = workdir / "fusefs.env"
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in self.secrets.items()))
        self.env_file.chmod(0o600)
        self.fstab_new = workdir / "fstab.new"
        self.fstab_new.write_text(self.sub(fstab_line()) + "\n")
        self.state = workdir / "state"
        path = f"{VENV_BIN}:{os.environ.get('PATH', os.defpath)}"
        self.env = {**os.environ, **self.secrets, "XDG_STATE_HOME": str(self.state), "PATH": path}

    def sub(self, command: str) -> str:
        for doc_path, ours in (
            (CONFIG, self.config),
            (ENV_FILE, self.env_file),
            (FSTAB_NEW, self.fstab_new),
            (VENV, Path(sys.prefix)),
            ("127.0.0.1:9464", self.metrics),
        ):
            command = command.replace(doc_path, str(ours))
        return command

    def run(self, *commands: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Commands (the docs', placeholders replaced) in this process's mount namespace."""
        r = subprocess.run(
            ["sh", "-c", "\n".join(self.sub(c) for c in commands)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check:
            assert r.returncode == 0, f"{commands}:\n{r.stdout}\n{r.stderr}"
        return r

    def in_namespace(
        self, script: str, *, sbin_shim: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """``script`` (sh, the docs' paths replaced) in a private mount namespace set up as the
        module says; its output, the daemons it left ended."""
        if shutil.which("unshare") is None or os.geteuid() != 0:
            pytest.skip("needs root and unshare(1) for a private mount namespace")
        w = self.work
        for d in ("local-sbin", "units", "sbin-orig", "sbin"):
            (w / d).mkdir(exist_ok=True)
        prelude = [
            "set -eu",
            "mount -t tmpfs -o mode=0755 fusefs-test /mnt",
            f"mkdir {MNT}",
            f"mount --bind {w}/local-sbin /usr/local/sbin",
            f"mount --bind {w}/units /etc/systemd/system",
            f"touch {w}/fstab && mount --bind {w}/fstab /etc/fstab",
        ]
        if sbin_shim:  # /sbin with everything it has, and room for mount.fusefs
            prelude += [
                f"mount --bind /usr/sbin {w}/sbin-orig",
                f'for f in {w}/sbin-orig/*; do ln -s "$f" {w}/sbin/; done',
                f"mount --bind {w}/sbin /usr/sbin",
            ]
        text = "\n".join([*prelude, self.sub(script)])
        try:
            return subprocess.run(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", text],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=180,
            )
        finally:
            self.end_daemons()

    def end_daemons(self) -> None:
        """SIGTERM (then SIGKILL) every process still running with this test's config."""
        mine = [pid for pid in processes() if str(self.config) in cmdline(pid)]
        for pid in mine:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while (left := [p for p in mine if os.path.exists(f"/proc/{p}")]) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.1)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def daemons(self) -> list[int]:
        return [pid for pid in processes() if str(self.config) in cmdline(pid)]


def processes() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.fixture
def ops(world_tiny: Path, emulator: Emulator, workdir: Path) -> Iterator[Setup]:
    setup = Setup(world_tiny, emulator, workdir)
    try:
        yield setup
    finally:
        setup.end_daemons()


def step(out: str, name: str) -> str:
    """What the script printed between ``== name`` and the next ``==`` line."""
    m = re.search(rf"^== {re.escape(name)}\n(.*?)(?=^== |\Z)", out, re.M | re.S)
    assert m is not None, f"no step {name!r} in:\n{out}"
    return m.group(1)


def test_mount_t_fuse_fusefs_other_users_and_umount(ops: Setup) -> None:
    """`mount -t fuse.fusefs` through Debian's /sbin/mount.fuse, as the docs install it;
    allow_other lets `nobody` read, without it `nobody` is refused; uid/gid are shown."""
    r = ops.in_namespace(
        f"""
{doc("ln -s /opt/fusefs/.venv/bin/fusefs /usr/local/sbin/fusefs")}
echo "== mount"
{doc("mount -t fuse.fusefs")}
findmnt -n -o FSTYPE,SOURCE {MNT}
ls {MNT}
echo "== nobody"
{doc("runuser -u nobody -- ls /mnt/clouds")}
stat -c '%u %g %a' {MNT}/koodrive
echo "== umount"
{doc("umount /mnt/clouds")}
findmnt {MNT} || echo "not mounted"
echo "== private"
mount -t fuse.fusefs {CONFIG} {MNT}
if runuser -u nobody -- ls {MNT} 2>&1; then echo "nobody read it"; else echo "nobody refused"; fi
umount {MNT}
echo "== unknown"
mount -t fuse.fusefs {CONFIG} {MNT} -o allow_others,uid=1000 2>&1 || echo "rc=$?"
findmnt {MNT} || echo "not mounted"
"""
    )
    out = r.stdout
    assert r.returncode == 0, f"{out}\n{r.stderr}"
    # the source is the config file, as mount(8) was given it (so `mount -a` knows it)
    assert step(out, "mount").split()[:2] == ["fuse.fusefs", str(ops.config)]
    assert {"enos", "koodrive", "iotda", "roma"} <= set(step(out, "mount").split())
    nobody = step(out, "nobody").split()
    assert {"enos", "koodrive", "iotda", "roma"} <= set(nobody)
    assert nobody[-3:] == ["1000", "1000", "555"]
    assert "not mounted" in step(out, "umount")
    assert "nobody refused" in step(out, "private")
    assert "Permission denied" in step(out, "private")
    unknown = step(out, "unknown")
    assert "unknown mount option: allow_others" in unknown
    assert "rc=32" in unknown and "not mounted" in unknown
    assert not ops.daemons()  # umount ended each daemon
    # a background mount logs to a file named after the whole mountpoint, with dates
    log = ops.state / "fusefs" / "mnt-clouds.log"
    first = log.read_text().splitlines()[0]
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d [A-Z]+ ", first), first


def test_fstab_line_mount_and_dead_mount(ops: Setup) -> None:
    """The docs' fstab line: tried with `mount -T`, then from /etc/fstab; after a crash the
    dead mount (ENOTCONN) is cleared by `fusefs unmount` and mounted again."""
    r = ops.in_namespace(
        f"""
{doc("ln -s /opt/fusefs/.venv/bin/fusefs /usr/local/sbin/fusefs")}
echo "== tried"
{doc("mount -T /etc/fstab.new /mnt/clouds")}
ls {MNT}
umount {MNT}
cat {FSTAB_NEW} > /etc/fstab
echo "== fstab"
{doc("mount /mnt/clouds")}
{doc("findmnt /mnt/clouds")}
echo "== status"
{doc("fusefs status /mnt/clouds")}
{doc("curl -s http://127.0.0.1:9464/metrics")} | grep -c '^fusefs_requests_total'
echo "== again"
mount -a && echo "mount -a: rc=0"
findmnt -n -o TARGET {MNT} | wc -l
echo "== crash"
pid=$(pgrep -f -- "[f]usefs mount --foreground .*--config {CONFIG}")  # not this script
kill -9 $pid
while kill -0 $pid 2>/dev/null; do sleep 0.1; done
ls {MNT} 2>&1 || true
echo "== recover"
{doc("fusefs unmount /mnt/clouds")}
mount {MNT}
ls {MNT}
umount {MNT}
"""
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "koodrive" in step(r.stdout, "tried")
    assert "fuse.fusefs" in step(r.stdout, "fstab")
    status = step(r.stdout, "status")
    assert "koodrive" in status and "cache" in status.lower(), status
    assert int(status.split()[-1]) > 0  # the request counters, scraped
    # `mount -a` with the line mounted: nothing to do (the source matches the fstab line)
    assert step(r.stdout, "again").split() == ["mount", "-a:", "rc=0", "1"]
    assert "Transport endpoint is not connected" in out
    assert "cleaned up the dead mount" in out
    assert "koodrive" in step(r.stdout, "recover")
    assert not ops.daemons()


def test_mount_fusefs_helper(ops: Setup) -> None:
    """`mount.fusefs` linked as /sbin/mount.fusefs: `mount -t fusefs` uses it directly."""
    r = ops.in_namespace(
        f"""
{doc("ln -s /opt/fusefs/.venv/bin/mount.fusefs /sbin/mount.fusefs")}
echo "== mount"
{doc("mount -t fusefs")}
findmnt -n -o FSTYPE {MNT}
ls {MNT}
umount {MNT}
echo "== fake"
mount.fusefs {CONFIG} {MNT} -f -o uid=1000 && echo "checked"
findmnt {MNT} || echo "not mounted"
echo "== sloppy"
if mount.fusefs {CONFIG} {MNT} -o bogus 2>&1; then echo "mounted"; else echo "rc=$?"; fi
mount.fusefs {CONFIG} {MNT} -s -o bogus,ro 2>&1
umount {MNT}
""",
        sbin_shim=True,
    )
    out = r.stdout
    assert r.returncode == 0, f"{out}\n{r.stderr}"
    assert "fuse.fusefs" in step(out, "mount") and "koodrive" in step(out, "mount")
    assert "checked" in step(out, "fake") and "not mounted" in step(out, "fake")
    sloppy = step(out, "sloppy")
    assert "unknown mount option: bogus" in sloppy and "rc=32" in sloppy
    assert "ignoring unknown options: bogus" in sloppy
    assert not ops.daemons()


def test_fusefs_mount_with_options_and_flags(ops: Setup) -> None:
    """`fusefs mount -o ... --flag`: the docs' call, then cache stats and df while mounted;
    log files of two mountpoints with one basename do not collide."""
    mnt = ops.work / "a" / "clouds"
    mnt.mkdir(parents=True)
    command = doc("fusefs mount --config").replace(MNT, str(mnt))
    r = ops.run(command)
    try:
        assert "mounted" in r.stdout
        assert os.path.ismount(mnt) and os.listdir(mnt / "koodrive")
        st = os.stat(mnt / "koodrive")
        assert st.st_uid == 1000
        stats = ops.run(doc("fusefs cache stats /mnt/clouds").replace(MNT, str(mnt))).stdout
        assert stats.strip()
        df = ops.run(doc("df /mnt/clouds").replace(MNT, str(mnt))).stdout
        size, used = (int(n) for n in df.splitlines()[1].split()[1:3])
        assert (20 << 30) // 1024 <= size < (21 << 30) // 1024  # the cap, in 1K blocks
        assert used < size
        ops.run(doc("fusefs cache verify /mnt/clouds").replace(MNT, str(mnt)))
        ops.run(doc("fusefs cache clear /mnt/clouds").replace(MNT, str(mnt)))
    finally:
        u = ops.run(doc("fusefs unmount /mnt/clouds").replace(MNT, str(mnt)), check=False)
    assert u.returncode == 0, u.stderr
    assert not os.path.ismount(mnt)
    # another mountpoint named "clouds" gets its own log (and its own cache dir)
    other = ops.work / "b" / "clouds"
    other.mkdir(parents=True)
    r = ops.run(
        f"fusefs mount --config {ops.config} {other} --cache-dir {ops.work}/cache-b"
        f" --log-level debug"
    )
    try:
        assert os.path.ismount(other) and os.listdir(other / "enos")
    finally:
        ops.run(f"fusefs unmount {other}")
    logs = sorted(p.name for p in (ops.state / "fusefs").iterdir())
    assert logs == [
        f"{systemd.escape_path(mnt)}.log",
        f"{systemd.escape_path(other)}.log",
    ]
    assert " DEBUG " in (ops.state / "fusefs" / logs[1]).read_text()
    assert " DEBUG " not in (ops.state / "fusefs" / logs[0]).read_text()


def test_mount_refuses_bad_options_naming_them(ops: Setup) -> None:
    mnt = ops.work / "m"
    mnt.mkdir()
    for args, words in (
        (["-o", "allow_other,cache_max_size=lots"], ["[cache] max_size: cannot read size 'lots'"]),
        (["--file-mode", "0644"], ["[mount] file_mode", "write bits"]),
        (["-o", "uid=me"], ["-o uid: 'me' is not a number"]),
        (["--uid", "-5"], ["[mount] uid: must be an id >= 0"]),
        (["-o", "bogus,allow_others"], ["unknown mount options: bogus, allow_others"]),
    ):
        r = ops.run(f"fusefs mount --config {ops.config} {mnt} {shlex.join(args)}", check=False)
        assert r.returncode == 2, r.stderr
        for w in words:
            assert w in r.stderr, (args, r.stderr)
        assert not is_mounted(mnt)


def test_systemd_unit_installs_verifies_and_its_exec_start_mounts(ops: Setup) -> None:
    command = doc("fusefs systemd-unit")
    printed = ops.run(command.replace(" --install", "")).stdout
    assert "Type=notify" in printed and f"EnvironmentFile=-{ops.env_file}" in printed
    r = ops.in_namespace(
        f"""
{command}
cat /etc/systemd/system/{systemd.unit_name(Path(MNT))}
{doc("systemd-analyze verify")} 2>&1
echo "verified"
"""
    )
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    assert "verified" in r.stdout
    assert "Invalid" not in r.stdout and "ignoring" not in r.stdout, r.stdout
    assert r.stdout.startswith(printed), (r.stdout, printed)
    assert "systemctl daemon-reload" in r.stderr  # the next step is named
    # what systemd would run: ExecStartPre, then ExecStart in the foreground, its secrets from
    # the EnvironmentFile only; the mountpoint is ours (no namespace: it must outlive a shell)
    mnt = ops.work / "unit-mnt"
    mnt.mkdir()
    unit = (ops.work / "units" / systemd.unit_name(Path(MNT))).read_text().replace(MNT, str(mnt))
    lines = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUSEFS_")}
    for line in ops.env_file.read_text().splitlines():
        key, _, value = line.partition("=")
        env[key] = value
    env["XDG_STATE_HOME"] = str(ops.state)
    subprocess.run(shlex.split(lines["ExecStartPre"].lstrip("-")), env=env, check=False)
    log = ops.work / "unit.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(shlex.split(lines["ExecStart"]), env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert os.listdir(mnt / "koodrive")
        proc.send_signal(signal.SIGHUP)  # ExecReload: stays mounted
        time.sleep(1)
        assert os.path.ismount(mnt) and proc.poll() is None, log.read_text()
        proc.terminate()  # systemctl stop
        assert proc.wait(timeout=20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        unmount(proc, mnt)


def test_journald_gets_level_prefixes_and_no_dates(ops: Setup) -> None:
    """Under systemd ($JOURNAL_STREAM names stderr) lines carry the journal's "<N>" level."""
    mnt = ops.work / "j"
    mnt.mkdir()
    log = ops.work / "journal.txt"
    with open(log, "wb") as out:
        st = os.fstat(out.fileno())
        env = {**ops.env, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "fusefs", "mount", "-f", "--config", str(ops.config), str(mnt)],
            env=env,
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        rc = unmount(proc, mnt)
    assert rc == 0
    lines = log.read_text().splitlines()
    assert any(line.startswith("<6>INFO fusefs.mount: mounted ") for line in lines), lines
    assert all(re.match(r"<\d>[A-Z]+ ", line) for line in lines), lines


def test_config_check_example_and_probe(ops: Setup, emulator: Emulator) -> None:
    example = ops.work / "example.toml"
    ex = ops.sub(doc("fusefs config example")).replace(str(ops.config), str(example))
    ops.run(ex)
    example.chmod(0o600)
    check = doc("fusefs config check /etc/fusefs/config.toml")
    probe = doc("fusefs config check /etc/fusefs/config.toml --probe")
    # the example: valid once its secrets are set, and says which one is missing otherwise
    env_names = re.findall(r'_env = "([A-Z_]+)"', example.read_text())
    ex_check = check.replace(CONFIG, str(example))
    r = ops.run(ex_check)
    assert "ok" in r.stdout and "/enos, /koodrive, /iotda, /roma" in r.stdout
    saved = ops.env
    ops.env = {k: v for k, v in saved.items() if k not in env_names[1:]}
    r = ops.run(ex_check, check=False)
    ops.env = saved
    assert r.returncode == 2 and "is not set" in r.stderr
    assert any(f"environment variable {name} is not set" in r.stderr for name in env_names[1:])
    # the emulator's config: every provider authenticates and shows its folders
    r = ops.run(check)
    assert "20 GiB" not in r.stdout and "4 GiB" in r.stdout
    r = ops.run(probe)
    for name in ("enos", "koodrive", "iotda", "roma"):
        assert re.search(rf"^  {name}\s+ok: [1-9]\d* top-level entries", r.stdout, re.M), r.stdout
    # a rejected password: FAILED with the reason, exit status 1
    ops.env = {**saved, "FUSEFS_IAM_PASSWORD": "wrong"}
    r = ops.run(probe, check=False)
    ops.env = saved
    assert r.returncode == 1
    assert re.search(r"^  iotda\s+FAILED: ", r.stdout, re.M) and "koodrive" in r.stdout
    # a typo: the parser's own message
    bad = ops.work / "bad.toml"
    bad.write_text(ops.config.read_text().replace("[cache]", "[cache]\nmax_sise = 1"))
    bad.chmod(0o600)
    r = ops.run(check.replace(CONFIG, str(bad)), check=False)
    assert r.returncode == 2 and "[cache] unknown key 'max_sise'" in r.stderr


def test_version() -> None:
    r = subprocess.run(
        shlex.split(doc("fusefs --version").replace("fusefs", str(VENV_BIN / "fusefs"), 1)),
        capture_output=True,
        text=True,
        check=True,
    )
    assert re.fullmatch(r"fusefs \d+\.\d+\.\d+\S*\n", r.stdout)
