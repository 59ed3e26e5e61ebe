"""The emulator's ASGI application: EnOS, IAM, KooDrive (+OBS), IoTDA and ROMA on one base URL."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from . import admin, enos, iam, iotda, koodrive, roma
from .faults import FaultEngine, FaultPlan
from .state import World
from .web import json_response

log = logging.getLogger(__name__)


def check_link_base(link_base: str | None) -> str | None:
    """``link_base`` without its trailing ``/``; ``ValueError`` unless an http(s) URL with a host
    and no query or fragment."""
    if link_base is None:
        return None
    parts = urlsplit(link_base)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"link base must be an http(s)://host[:port][/prefix] URL: {link_base!r}")
    return link_base.rstrip("/")


async def _not_found(request: Request, exc: Exception) -> Response:
    return json_response({"message": "no Route matched with those values"}, 404)


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return json_response({"message": "Method Not Allowed"}, 405)


def create_app(
    world_dir: Path,
    faults: FaultPlan | None = None,
    *,
    clock: Callable[[], float] = time.time,
    link_base: str | None = None,
) -> Starlette:
    """Load ``world_dir/world.json`` into memory and build the app.

    ``faults`` is the initial fault plan (changeable through ``/_admin/faults``); ``clock``
    returns epoch seconds and drives token/URL expiry, task delays and rate windows.
    ``link_base`` (``http(s)://host[:port][/prefix]``): KooDrive download links of objects
    stored as blobs point at ``<link_base>/<blob path relative to world_dir>`` (an external
    static server whose root is the world dir, as real links point at OBS) instead of the
    emulator's own ``/obs/`` route; the presigned-looking query is kept. Default: ``None``,
    the emulator serves every byte itself.
    The :class:`World` is reachable as ``app.state.world``.
    """
    world = World(Path(world_dir), FaultEngine(faults), clock, check_link_base(link_base))
    routes: list[BaseRoute] = []
    routes += admin.routes(world)
    routes += enos.routes(world)
    routes += iam.routes(world)
    routes += koodrive.routes(world)
    routes += iotda.routes(world)
    routes += roma.routes(world)
    app = Starlette(
        routes=routes,
        exception_handlers={404: _not_found, 405: _not_allowed},
    )
    app.state.world = world
    return app
