"""The emulator's ASGI application: EnOS, IAM, KooDrive (+OBS), IoTDA and ROMA on one base URL."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from . import admin, enos, iam, iotda, koodrive, roma
from .faults import FaultEngine, FaultPlan
from .state import World
from .web import json_response

log = logging.getLogger(__name__)


async def _not_found(request: Request, exc: Exception) -> Response:
    return json_response({"message": "no Route matched with those values"}, 404)


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return json_response({"message": "Method Not Allowed"}, 405)


def create_app(
    world_dir: Path,
    faults: FaultPlan | None = None,
    *,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """Load ``world_dir/world.json`` into memory and build the app.

    ``faults`` is the initial fault plan (changeable through ``/_admin/faults``); ``clock``
    returns epoch seconds and drives token/URL expiry, task delays and rate windows.
    The :class:`World` is reachable as ``app.state.world``.
    """
    world = World(Path(world_dir), FaultEngine(faults), clock)
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
