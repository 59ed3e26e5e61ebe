"""Run the emulator on a real socket with uvicorn (httptools/uvloop when installed)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import tempfile
from pathlib import Path

import uvicorn

from .app import check_link_base, create_app
from .faults import FaultPlan

log = logging.getLogger(__name__)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def serve(
    world_dir: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    port_file: Path | None = None,
    faults_file: Path | None = None,
    link_base: str | None = None,
) -> None:
    """Serve ``world_dir`` until SIGINT/SIGTERM. With ``port=0`` an ephemeral port is chosen;
    the real port is written to ``port_file`` (atomically) once the server accepts requests.
    ``link_base``: see :func:`fusefs.emulator.app.create_app`."""
    plan = FaultPlan.load(faults_file) if faults_file is not None else None
    app = create_app(world_dir, plan, link_base=link_base)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    real_port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        loop="auto",
        http="auto",
        lifespan="off",
        access_log=False,
        timeout_keep_alive=30,
    )
    server = uvicorn.Server(config)

    async def run() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        # uvicorn offers no "started" event: poll its flag
        while not server.started and not task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        if server.started:
            log.warning("emulator listening on http://%s:%d/", host, real_port)
            if port_file is not None:
                _write_atomic(port_file, f"{real_port}\n")
        await task

    def _terminate(signum: int, frame: object) -> None:
        # uvicorn re-raises the signal it caught once it has shut down: exit cleanly then
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            runner.run(run())
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
        if port_file is not None:
            try:
                port_file.unlink()
            except FileNotFoundError:
                pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fusefs.emulator",
        description="Serve the EnOS/IAM/KooDrive/IoTDA/ROMA emulator for a generated world.",
    )
    parser.add_argument("--world", type=Path, required=True, help="world dir (has world.json)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = pick a free port")
    parser.add_argument("--port-file", type=Path, help="write the real port here when ready")
    parser.add_argument("--faults", type=Path, help="fault plan (.json or .toml)")
    parser.add_argument(
        "--link-base",
        metavar="URL",
        help="KooDrive links of blob objects point at URL/<blob path> (a static server whose "
        "root is the world dir) instead of the emulator itself",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not (args.world / "world.json").is_file():
        parser.error(f"{args.world}/world.json not found")
    try:
        link_base = check_link_base(args.link_base)
    except ValueError as exc:
        parser.error(str(exc))
    serve(args.world, args.host, args.port, args.port_file, args.faults, link_base)
    return 0
