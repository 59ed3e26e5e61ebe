"""IoTDA export tasks: create, list, delete, download (huawei.md §3)."""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import auth
from .state import JSON, Body, Token, World, make_zip
from .web import Stream, endpoint, json_response, read_json, request_id

log = logging.getLogger(__name__)

RESOURCE_TYPES = ("BatchTask", "Device", "DevicePropertyHistory", "MessageTraceData")
MAX_TASKS = 50
MAX_UNFINISHED = 5
TASK_FIELDS = (
    "export_task_id",
    "resource_type",
    "resource_condition",
    "export_format",
    "status",
    "export_count",
    "progress",
    "create_time",
    "end_time",
    "app_type",
    "app_id",
)
_HEX24 = re.compile(r"^[0-9a-f]{24}$")
_APP_ID = re.compile(r"^[a-zA-Z0-9_-]{1,36}$")


def error(status: int, code: str, msg: str) -> Response:
    return json_response({"error_code": code, "error_msg": msg}, status)


def apig_401(msg: str) -> Response:
    return json_response(
        {"error_code": "APIG.0301", "error_msg": msg, "request_id": request_id()}, 401
    )


def iso_ms(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(epoch))) + (
        f".{int((epoch % 1) * 1000):03d}Z"
    )


def _advance(world: World, t: JSON) -> None:
    """New tasks turn from Processing to Success once their delay has passed."""
    ready = t.get("_ready_at")
    if t["status"] == "Processing" and ready is not None and world.clock() >= ready:
        t["status"] = "Success"
        t["progress"] = 100
        t["end_time"] = iso_ms(ready)
        data = make_zip(
            f"{t['export_task_id']}.xls",
            t["export_task_id"],
            size=max(512, 64 * int(t.get("export_count") or 1)),
        )
        t["body"] = Body.from_bytes(data)


def task_json(t: JSON) -> JSON:
    return {k: t.get(k) for k in TASK_FIELDS}


async def _auth(world: World, request: Request) -> tuple[Token | None, Response | None]:
    tok, msg = await auth.huawei_check(world, request)
    if tok is None:
        return None, apig_401(msg)
    if request.path_params["project_id"] != world.iotda_project:
        return None, error(403, "IOTDA.000004", "Invalid access token.")
    return tok, None


def _new_id(world: World) -> str:
    world.iotda_counter += 1
    candidate = int(f"{int(world.clock()):08x}{world.iotda_counter:016x}", 16)
    if world.iotda_tasks:
        candidate = max(candidate, max(int(i, 16) for i in world.iotda_tasks) + 1)
    return f"{candidate:024x}"


async def create_task(world: World, request: Request) -> Response:
    _tok, err = await _auth(world, request)
    if err is not None:
        return err
    try:
        body = await read_json(request)
    except ValueError:
        return error(400, "IOTDA.000008", "Invalid JSON format.")
    if not isinstance(body, dict):
        return error(400, "IOTDA.000006", "Invalid input data.")
    rtype = body.get("resource_type")
    cond = body.get("resource_condition")
    fmt = body.get("export_format", "xls")
    app_type = body.get("app_type", "GLOBAL")
    app_id = body.get("app_id")
    if (
        rtype not in RESOURCE_TYPES
        or not isinstance(cond, dict)
        or fmt != "xls"
        or app_type not in ("GLOBAL", "APP")
        or (app_id is not None and not (isinstance(app_id, str) and _APP_ID.match(app_id)))
    ):
        return error(400, "IOTDA.000006", "Invalid input data.")
    for t in world.iotda_tasks.values():
        _advance(world, t)
    unfinished = sum(1 for t in world.iotda_tasks.values() if t["status"] == "Processing")
    if unfinished >= MAX_UNFINISHED:
        return error(
            403, "IOTDA.014801", "The number of unfinished export tasks exceeds the limit."
        )
    task_id = _new_id(world)
    now = world.clock()
    task: JSON = {
        "export_task_id": task_id,
        "resource_type": rtype,
        "resource_condition": cond,
        "export_format": fmt,
        "status": "Processing",
        "export_count": 10,
        "progress": 1,
        "create_time": iso_ms(now),
        "end_time": None,
        "app_type": app_type,
        "app_id": app_id,
        "body": None,
        "_ready_at": now + float(world.faults.plan.iotda_task_delay),
    }
    world.iotda_tasks[task_id] = task
    while len(world.iotda_tasks) > MAX_TASKS:  # the 51st task deletes the oldest [C]
        del world.iotda_tasks[min(world.iotda_tasks)]
    _advance(world, task)
    return json_response(task_json(task), 201)


def _int_param(value: str | None, default: int, lo: int, hi: int) -> int | None:
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except ValueError:
        return None
    return n if lo <= n <= hi else None


async def list_tasks(world: World, request: Request) -> Response:
    _tok, err = await _auth(world, request)
    if err is not None:
        return err
    q = request.query_params
    limit = _int_param(q.get("limit"), 10, 1, 50)
    if limit is None:
        return error(
            400, "IOTDA.000017", "Invalid input. The specified parameter 'limit' is out of range."
        )
    offset = _int_param(q.get("offset"), 0, 0, 500)
    if offset is None:
        return error(
            400, "IOTDA.000017", "Invalid input. The specified parameter 'offset' is out of range."
        )
    marker = q.get("marker") or "f" * 24
    if not _HEX24.match(marker):
        return error(400, "IOTDA.000006", "Invalid input data.")
    rtype = q.get("resource_type")
    if rtype is not None and rtype not in RESOURCE_TYPES:
        return error(400, "IOTDA.000006", "Invalid input data.")
    cond: Any = None
    if q.get("resource_condition"):
        try:
            cond = json.loads(q["resource_condition"])
        except ValueError:
            return error(400, "IOTDA.014800", "Invalid resource condition.")
    for t in world.iotda_tasks.values():
        _advance(world, t)

    def keep(t: JSON) -> bool:
        if rtype and t["resource_type"] != rtype:
            return False
        if isinstance(cond, dict) and any(
            (t.get("resource_condition") or {}).get(k) != v for k, v in cond.items()
        ):
            return False
        if q.get("app_type") and t.get("app_type") != q["app_type"]:
            return False
        return not (q.get("app_id") and t.get("app_id") != q["app_id"])

    matching = sorted(
        (t for t in world.iotda_tasks.values() if keep(t)),
        key=lambda t: t["export_task_id"],
        reverse=True,
    )
    after = [t for t in matching if t["export_task_id"] < marker]
    page = after[offset : offset + limit]
    page_json: JSON = {"count": len(matching)}
    if page:
        page_json["marker"] = page[-1]["export_task_id"]
    return json_response({"export_tasks": [task_json(t) for t in page], "page": page_json})


async def delete_task(world: World, request: Request) -> Response:
    _tok, err = await _auth(world, request)
    if err is not None:
        return err
    task_id = request.path_params["task_id"]
    if world.iotda_tasks.pop(task_id, None) is None:
        return error(404, "IOTDA.014802", "The export task does not exist.")
    return Response(status_code=204)


async def download(world: World, request: Request) -> Response:
    tok, err = await _auth(world, request)
    if err is not None:
        return err
    assert tok is not None
    t = world.iotda_tasks.get(request.path_params["task_id"])
    if t is None:
        return error(404, "IOTDA.014802", "The export task does not exist.")
    window = float(world.faults.plan.iotda_download_window)
    now = world.clock()
    last = world.iotda_last_download.get(tok.subject)
    if window > 0 and last is not None and now - last < window:
        return error(403, "IOTDA.014805", "Download export file too frequently.")
    _advance(world, t)
    if t["status"] != "Success" or t.get("body") is None:
        msg = (
            "The export task is not finished."
            if t["status"] == "Processing"
            else "The export task failed."
        )
        return error(400, "IOTDA.014800", msg)
    world.iotda_last_download[tok.subject] = now
    body: Body = t["body"]
    headers = {"Content-Disposition": f'attachment; filename="{t["export_task_id"]}.zip"'}
    return Stream(body.iter(world.dir, 0, body.size), body.size, headers=headers)


def routes(world: World) -> list[Route]:
    def ep(name: str, fn: Any) -> Any:
        return endpoint(world, name, lambda r: fn(world, r))

    base = "/v5/iot/{project_id}/export-tasks"
    return [
        Route(base, ep("iotda.create", create_task), methods=["POST"]),
        Route(base, ep("iotda.list", list_tasks), methods=["GET"]),
        Route(base + "/{task_id}", ep("iotda.delete", delete_task), methods=["DELETE"]),
        Route(base + "/{task_id}/file", ep("iotda.download", download), methods=["GET"]),
    ]
