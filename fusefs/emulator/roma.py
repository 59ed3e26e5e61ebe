"""ROMA Connect asset packages: export job, job status, one-shot archive download (huawei.md §4)."""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import auth
from .state import JSON, Body, Token, World, make_zip
from .web import Stream, endpoint, json_response, read_json, request_id

log = logging.getLogger(__name__)

MAX_ITEMS = 100


def error(status: int, msg: str, details: str, code: str = "ROMA.00000101") -> Response:
    return json_response(
        {
            "error_code": code,
            "error_msg": msg,
            "error_details": details,
            "request_id": request_id(),
        },
        status,
    )


def iso_s(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch)))


def _failure(resource_name: str, msg: str) -> list[JSON]:
    """A job's ``reasons``: a list of ``AssetJobReason`` objects."""
    return [
        {
            "resource_type": "application",
            "resource_name": resource_name,
            "error_code": "ROMA.00000101",
            "error_msg": msg,
        }
    ]


def _advance(world: World, job: JSON) -> None:
    """A started job ends once its delay has passed: SUCCEEDED with an archive, or FAILED with
    its reasons when it was started under the plan's ``roma_export_fails``."""
    ready = job.get("_ready_at")
    if job["status"] == "RUNNING" and ready is not None and world.clock() >= ready:
        job["end_time"] = iso_s(ready)
        if job.get("_fails"):
            job["status"] = "FAILED"
            job["progress_percent"] = 0.5
            job["reasons"] = _failure(str(job.get("_app") or "app"), "export failed")
            return
        job["status"] = "SUCCEEDED"
        job["progress_percent"] = 1.0
        job["archive_id"] = secrets.token_hex(16)
        job["body"] = Body.from_bytes(make_zip("assets.json", job["job_id"], 8192))


def _reasons(job: JSON) -> list[JSON]:
    """``reasons`` as the SDK model declares it (a list of AssetJobReason); a world may spell the
    key ``reason`` (the name in one doc version)."""
    given = job.get("reasons", job.get("reason"))
    if isinstance(given, list):
        return given
    return _failure("app", "export failed") if job["status"] == "FAILED" else []


async def _auth(
    world: World, request: Request
) -> tuple[Token | None, dict[str, JSON] | None, Response | None]:
    tok, msg = await auth.huawei_check(world, request)
    if tok is None:
        return (
            None,
            None,
            json_response(
                {"error_code": "APIG.0301", "error_msg": msg, "request_id": request_id()},
                401,
            ),
        )
    if request.path_params["project_id"] != world.roma_project:
        return None, None, error(403, "Forbidden", "project does not match the token")
    jobs = world.roma_instances.get(request.path_params["instance_id"])
    if jobs is None:
        return (
            None,
            None,
            error(
                404,
                "Instance not found",
                f"instance {request.path_params['instance_id']} does not exist",
            ),
        )
    return tok, jobs, None


def _ids(value: Any, key: str) -> bool:
    if isinstance(value, str):  # old doc variant: apps as a String
        return True
    if not isinstance(value, list) or len(value) > MAX_ITEMS:
        return False
    return all(isinstance(v, dict) and (v.get("id") or v.get(key)) for v in value)


def _first_id(value: Any) -> str | None:
    if isinstance(value, list) and value and isinstance(value[0], dict):
        first = value[0].get("id")
        return str(first) if first else None
    return None


async def export(world: World, request: Request) -> Response:
    tok, jobs, err = await _auth(world, request)
    if err is not None:
        return err
    assert tok is not None and jobs is not None
    try:
        body = await read_json(request)
    except ValueError:
        body = None
    if (
        not isinstance(body, dict)
        or not _ids(body.get("apps"), "id")
        or not _ids(body.get("tasks"), "task_id")
    ):
        return error(400, "Invalid request", "apps and tasks are required (<= 100 items each)")
    for j in jobs.values():
        _advance(world, j)
    for inst in world.roma_instances.values():
        for j in inst.values():
            if (
                j.get("user") == tok.subject
                and j["type"] == "exportAsset"
                and j["status"] == "RUNNING"
            ):
                return error(
                    403, "An export job is already running", f"job {j['job_id']} is still running"
                )
    now = world.clock()
    job_id = secrets.token_hex(16)
    jobs[job_id] = {
        "job_id": job_id,
        "type": "exportAsset",
        "status": "RUNNING",
        "archive_id": None,
        "progress_percent": 0.0,
        "begin_time": iso_s(now),
        "end_time": None,
        "body": None,
        "consumed": False,
        "user": tok.subject,
        "_ready_at": now + float(world.faults.plan.roma_job_delay),
        "_fails": bool(world.faults.plan.roma_export_fails),
        "_app": _first_id(body.get("apps")),
    }
    _advance(world, jobs[job_id])
    return json_response({"job_id": job_id})


async def job_status(world: World, request: Request) -> Response:
    _tok, jobs, err = await _auth(world, request)
    if err is not None:
        return err
    assert jobs is not None
    job = jobs.get(request.path_params["job_id"])
    if job is None:
        return error(404, "Job not found", f"job {request.path_params['job_id']} does not exist")
    _advance(world, job)
    out: JSON = {
        "id": job["job_id"],
        "type": job.get("type", "exportAsset"),
        "status": job["status"],
        "reasons": _reasons(job),
        "progress_percent": job.get("progress_percent", 0.0),
        "begin_time": job.get("begin_time"),
        "end_time": job.get("end_time"),
    }
    if job["status"] == "SUCCEEDED" and job.get("archive_id") and not job.get("consumed"):
        out["archive_id"] = job["archive_id"]
    return json_response(out)


async def download(world: World, request: Request) -> Response:
    _tok, jobs, err = await _auth(world, request)
    if err is not None:
        return err
    assert jobs is not None
    archive_id = request.path_params["archive_id"]
    for j in jobs.values():
        _advance(world, j)
    job = next((j for j in jobs.values() if j.get("archive_id") == archive_id), None)
    if job is None or job.get("body") is None or job.get("consumed"):
        return error(
            403,
            "The asset package does not exist or has been downloaded",
            f"archive {archive_id} is not available",
        )
    if world.faults.plan.one_shot:
        job["consumed"] = True  # consumed when the download starts [I]
    body: Body = job["body"]
    headers = {"Content-Disposition": f'attachment; filename="{archive_id}.zip"'}
    return Stream(body.iter(world.dir, 0, body.size), body.size, headers=headers)


def routes(world: World) -> list[Route]:
    def ep(name: str, fn: Any) -> Any:
        return endpoint(world, name, lambda r: fn(world, r))

    base = "/v2/{project_id}/instances/{instance_id}/assets"
    return [
        Route(base + "/export", ep("roma.export", export), methods=["POST"]),
        Route(base + "/jobs/{job_id}", ep("roma.job", job_status), methods=["GET"]),
        Route(base + "/archives/{archive_id}", ep("roma.download", download), methods=["GET"]),
    ]
