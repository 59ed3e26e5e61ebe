"""The daemon's lifecycle as the process that starts it sees it: spawn ``fusefs mount
--foreground``, wait on its status pipe until the mount is up, stop it, unmount with a lazy
fallback. Used by ``fusefs mount`` (in the background), ``fusefs unmount``, ``fusefs demo`` and
the tests.

The status pipe (hidden option ``--status-fd N``): the daemon writes JSON lines to fd N,
``{"warning": ...}`` per provider that is down, then ``{"mounted": MNT}`` or ``{"error": ...}``,
and closes it (``StatusWriter``); the starter reads them (``Daemon.wait_ready``).

Nothing heavy is imported at the top (trio, pyfuse3): the CLI's quick commands import this."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT = 60.0  # the start checks take up to 20 s when a service does not answer
STOP_TIMEOUT = 15.0  # for the daemon to unmount and exit after SIGTERM (or an unmount)
LOG_TAIL = 4000  # characters of the daemon's log in a StartError


class StartError(Exception):
    """The daemon did not come up: it reported an error, exited, or took too long. The message
    is one line for the user; ``log_tail`` is the end of the daemon's log."""

    def __init__(self, message: str, log_tail: str) -> None:
        super().__init__(message)
        self.log_tail = log_tail


class UnmountError(Exception):
    """An unmount that did not happen; the message says what to do."""


class NotMounted(UnmountError):
    """Nothing is mounted there."""


class StatusWriter:
    """The daemon's end of the status pipe (``fd`` None: no starter is listening)."""

    def __init__(self, fd: int | None) -> None:
        self._out = os.fdopen(fd, "w", encoding="utf-8") if fd is not None else None

    def _send(self, **msg: str) -> None:
        if self._out is None:
            return
        with contextlib.suppress(OSError):  # the starter went away: nobody to tell
            self._out.write(json.dumps(msg) + "\n")
            self._out.flush()

    def close(self) -> None:
        if self._out is not None:
            with contextlib.suppress(OSError):
                self._out.close()
            self._out = None

    def ready(self, mnt: Path, warnings: list[str]) -> None:
        for w in warnings:
            self._send(warning=w)
        self._send(mounted=str(mnt))
        self.close()

    def error(self, msg: str) -> None:
        self._send(error=msg)
        self.close()


@dataclass
class Status:
    """What a daemon said on its status pipe while starting (``read_status``)."""

    mounted: bool = False
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


def read_status(proc: subprocess.Popen[bytes], status_fd: int, timeout: float) -> Status:
    """Read the daemon's status pipe until it reports the mount up or failed, exits, or
    ``timeout`` passes (``mounted`` and ``error`` both unset). Closes ``status_fd``."""
    out = Status()
    buf = b""
    deadline = time.monotonic() + timeout
    try:
        while not out.mounted and out.error is None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([status_fd], [], [], min(left, 0.5))
            if not ready:
                continue
            chunk = os.read(status_fd, 65536)
            if not chunk:  # the daemon closed it without a word: it is exiting
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                _take(out, line)
        if out.error is not None:  # it is on its way out: let it go before we report
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
    finally:
        os.close(status_fd)
    return out


def _take(out: Status, line: bytes) -> None:
    try:
        msg = json.loads(line)
    except ValueError:
        return
    if not isinstance(msg, dict):
        return
    if "warning" in msg:
        out.warnings.append(str(msg["warning"]))
    elif "error" in msg:
        out.error = str(msg["error"])
    elif "mounted" in msg:
        out.mounted = True


def tail(path: Path, size: int = LOG_TAIL) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-size:].decode(errors="replace")


class Daemon(subprocess.Popen[bytes]):
    """A ``fusefs mount --foreground`` child (``spawn``): the process, with its mountpoint, its
    log and the read end of its status pipe (until ``wait_ready``)."""

    def __init__(
        self,
        argv: list[str],
        *,
        mountpoint: Path,
        log: Path | None,
        status_pipe: tuple[int, int],
        env: Mapping[str, str] | None,
        new_session: bool,
        preexec_fn: Callable[[], None] | None,
    ) -> None:
        read_end, write_end = status_pipe
        # no log: its stderr is ours (the journal, under systemd)
        with open(log, "ab") if log is not None else open(os.devnull, "wb") as out:
            super().__init__(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out if log is not None else None,
                env=env,
                start_new_session=new_session,
                pass_fds=(write_end,),
                preexec_fn=preexec_fn,
            )
        self.mountpoint = mountpoint
        self.log = log
        self._status_fd: int | None = read_end

    def log_tail(self) -> str:
        return tail(self.log) if self.log is not None else ""

    def _see(self) -> str:
        return f"see {self.log}" if self.log is not None else "see its log (journalctl)"

    def wait_ready(self, timeout: float = START_TIMEOUT) -> list[str]:
        """Wait until the daemon reports the mount up; return its warnings (one per provider
        that is down). Raises StartError otherwise; a daemon still starting after ``timeout`` is
        terminated."""
        status_fd, self._status_fd = self._status_fd, None
        if status_fd is None:
            raise RuntimeError("wait_ready was called already")
        started = read_status(self, status_fd, timeout)
        if started.mounted:
            return started.warnings
        if started.error is not None:
            msg = started.error
        elif self.poll() is not None:
            msg = f"the daemon exited with {self.returncode}; {self._see()}"
        else:
            self.terminate()
            msg = f"{self.mountpoint} did not become a mount within {timeout:.0f} s; {self._see()}"
        raise StartError(msg, self.log_tail())

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM (the daemon unmounts, then exits), SIGKILL after ``timeout``; then a lazy
        unmount of what is left (a killed daemon leaves a dead mount). Its exit status."""
        if self._status_fd is not None:  # never waited for: nobody reads the pipe any more
            os.close(self._status_fd)
            self._status_fd = None
        if self.poll() is None:
            self.send_signal(signal.SIGTERM)
        try:
            rc = self.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = self.wait()
        with contextlib.suppress(UnmountError):
            unmount(self.mountpoint, lazy=True)
        return rc


def spawn(
    config: str | Path,
    mountpoint: Path,
    log: Path | None,
    *,
    options: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    new_session: bool = False,
    die_with_parent: bool = False,
) -> Daemon:
    """Start ``fusefs mount --foreground [options] --config CONFIG MOUNTPOINT``, its output
    appended to ``log`` (None: its stderr is ours); ``wait_ready`` next. ``new_session``: the
    terminal's signals (Ctrl-C) reach the caller alone. ``die_with_parent``: see
    ``die_with_this_process``."""
    argv = [sys.executable, "-m", "fusefs", "mount", "--foreground", *options]
    read_end, write_end = os.pipe()
    argv += ["--config", str(config), "--status-fd", str(write_end), str(mountpoint)]
    try:
        return Daemon(
            argv,
            mountpoint=mountpoint,
            log=log,
            status_pipe=(read_end, write_end),
            env=env,
            new_session=new_session,
            preexec_fn=die_with_this_process() if die_with_parent else None,
        )
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)  # the daemon holds its own copy


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_this_process() -> Callable[[], None]:
    """A ``preexec_fn`` after which the child gets SIGTERM when this process dies, ``kill -9``
    included (Linux's PR_SET_PDEATHSIG); the daemon then unmounts, the emulator stops. The
    signal comes when the forking *thread* ends: use it from the main thread only (the demo)."""
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGTERM))
        if os.getppid() != parent:  # the parent died before prctl: nobody will send it
            os._exit(1)

    return preexec


def mount_path(path: Path) -> Path:
    """``path`` as /proc/self/mountinfo names it, without asking a (maybe dead) mount."""
    path = path.absolute()
    return Path(os.path.realpath(path.parent)) / path.name if path.name else path


def is_mounted(path: Path) -> bool:
    """In the mount table, alive or dead (``os.path.ismount`` says False for a dead FUSE mount)."""
    from fusefs.control import mount_table

    real = os.fsencode(mount_path(path))
    return any(mp == real for mp, _, _ in mount_table())


def unmount(mountpoint: Path, *, lazy: bool = False) -> bool:
    """Unmount the FUSE mount at ``mountpoint``, a dead one (its daemon killed) included: True if
    it was dead. A live mount that programs still use stays mounted (UnmountError says how to
    find them) unless ``lazy``: then it is detached now and goes once unused (cleanups that
    must leave nothing mounted: the demo's, the tests'). NotMounted if nothing is mounted."""
    from fusefs.mount import mount_state

    fusermount = shutil.which("fusermount3") or shutil.which("fusermount")
    if fusermount is None:
        raise UnmountError("fusermount3 not found: install fuse3")
    mnt = mount_path(mountpoint)
    state = mount_state(mnt)
    if state is None:
        raise NotMounted(f"{mnt} is not mounted")
    _, dead = state
    r = subprocess.run([fusermount, "-u", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0 and (dead or lazy):
        # nothing can be served from a dead mount: detach it even while programs use it
        r = subprocess.run([fusermount, "-u", "-z", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        msg = r.stderr.strip().replace("\n", "; ") or f"could not unmount {mnt}"
        if "busy" in msg.lower():
            msg += (
                f": programs still use it (`fuser -vm {mnt}` names them); close them, or "
                f"`fusermount3 -u -z {mnt}` to detach it now"
            )
        raise UnmountError(msg)
    return dead
