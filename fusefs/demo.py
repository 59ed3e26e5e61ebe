"""`fusefs demo`: generate a world, start the emulator, mount it, unmount cleanly on Ctrl-C."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from fusefs.daemon import START_TIMEOUT, Daemon, StartError, spawn
from fusefs.testbed import EmulatorProcess, demo_config, start_emulator

# IoTDA allows one export download per 30 s; the demo shortens that (emulator and config alike)
# so that `ls -l` of 20 exports does not take ten minutes.
DEMO_IOTDA_WINDOW = 2.0

_Child = TypeVar("_Child")


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
    Ctrl-C does (KeyboardInterrupt). While a child is being started (``hold`` to ``release``,
    see ``_child``) a signal is held, and raised once the child's cleanup is in place: a
    signal in between would leave the child running."""

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


@contextlib.contextmanager
def _child(start: Callable[[], _Child], stop: Callable[[_Child], object]) -> Iterator[_Child]:
    """``start()`` a child process with the stop signals held, so that ``stop(child)`` surely
    runs once it exists; a signal that came meanwhile is raised inside the block."""
    held = _STOPPER.hold()
    try:
        child = start()
    except BaseException:
        _STOPPER.release(held, raise_pending=False)
        raise
    try:
        _STOPPER.release(held)
        yield child
    finally:
        stop(child)


def run_demo(mountpoint: Path, workdir: Path, *, scale: str = "demo") -> int:
    """Ctrl-C, SIGTERM and SIGHUP all stop the demo the same way: daemon (which unmounts),
    then the emulator; nothing is left running or mounted. So does ``kill -9`` of the demo:
    its children get SIGTERM then (``die_with_parent``)."""
    previous = {s: signal.getsignal(s) for s in _STOP_SIGNALS}
    _STOPPER.armed, _STOPPER.pending = True, False
    for s in _STOP_SIGNALS:
        signal.signal(s, _STOPPER)
    try:
        return _run_demo(mountpoint.absolute(), workdir.absolute(), scale)
    except KeyboardInterrupt:  # before the daemon was started
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
    with _child(functools.partial(_start_emulator, world_dir, workdir), _stop_emulator) as emu:
        base_url = emu.wait_url()
        config, env = _write_config(world_dir, base_url, workdir)
        start_daemon = functools.partial(
            spawn,
            config,
            mountpoint,
            workdir / "daemon.log",
            env=env,
            new_session=True,  # the terminal's signals reach the demo alone
            die_with_parent=True,
        )
        try:
            with _child(start_daemon, _stop_daemon) as daemon:
                status = _serve(daemon, base_url, world_dir, config)
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP, whenever they come
            status = 0
    if mount_state(mountpoint) is not None:
        _say(f"fusefs: error: {mountpoint} is still mounted: run fusefs unmount", err=True)
        return 1
    _say("fusefs demo: stopped; nothing left mounted")
    return status


def _start_emulator(world_dir: Path, workdir: Path) -> EmulatorProcess:
    faults = workdir / "demo-faults.json"
    faults.write_text(json.dumps({"iotda_download_window": DEMO_IOTDA_WINDOW}))
    return start_emulator(world_dir, workdir, faults=faults, die_with_parent=True)


def _stop_emulator(emulator: EmulatorProcess) -> None:
    _ignore_stop_signals()
    emulator.stop()


def _write_config(world_dir: Path, base_url: str, workdir: Path) -> tuple[Path, dict[str, str]]:
    """The config, and the environment for the daemon (with the secrets)."""
    config = workdir / "config.toml"
    secrets = demo_config(
        world_dir,
        base_url,
        workdir / "cache",
        config,
        iotda={"download_interval": DEMO_IOTDA_WINDOW},
    )
    return config, {**os.environ, **secrets}


def _stop_daemon(daemon: Daemon) -> None:
    _ignore_stop_signals()
    _say("\nfusefs demo: unmounting ...")
    daemon.stop()  # SIGTERM: the daemon unmounts, then exits


def _serve(daemon: Daemon, base_url: str, world_dir: Path, config: Path) -> int:
    """Wait for the mount, say how to use it, then wait for the daemon's own end (1): the
    demo's stop signals end this wait by KeyboardInterrupt."""
    try:
        warnings = daemon.wait_ready(START_TIMEOUT)
    except StartError as exc:
        _say(f"fusefs: error: the mount failed: {exc}", err=True)
        return 1
    for w in warnings:
        _say(f"fusefs demo: warning: {w}", err=True)
    _say(_banner(daemon, base_url, world_dir, config))
    while daemon.poll() is None:
        time.sleep(0.5)
    _say(f"fusefs demo: the daemon exited with {daemon.returncode}; see {daemon.log}")
    return 1


def _banner(daemon: Daemon, base_url: str, world_dir: Path, config: Path) -> str:
    mountpoint = daemon.mountpoint
    rel = os.path.relpath(mountpoint)
    cli = Path(sys.executable).with_name("fusefs")
    fusefs = os.path.relpath(cli) if cli.exists() else f"{sys.executable} -m fusefs"
    return f"""
fusefs demo: the emulator listens on {base_url}; its clouds are mounted at {mountpoint}
  world:   {world_dir}   (expected view: {world_dir / "expected"})
  config:  {config}
  log:     {daemon.log}
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
