"""Admin routes under ``/_admin/``: stats, fault plan, world mutations (docs/emulator.md)."""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .faults import FaultPlan, FaultPlanError
from .state import JSON, Body, World
from .web import json_response, read_json

log = logging.getLogger(__name__)


def bad(msg: str, status: int = 400) -> Response:
    return json_response({"error": msg}, status)


async def _body(request: Request) -> JSON:
    try:
        body = await read_json(request)
    except ValueError as exc:
        raise ValueError(f"malformed JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    return body


async def stats(world: World, request: Request) -> Response:
    """``{"requests": {route: n}, "bytes": {route: n}, "statuses": {route: {status: n}},
    "max_in_flight": {route: n}}`` (the most requests of a route answered at once)."""
    items = sorted(world.stats.items())
    return json_response(
        {
            "requests": {k: v.requests for k, v in items},
            "bytes": {k: v.bytes for k, v in items},
            "statuses": {k: dict(v.statuses) for k, v in items},
            "max_in_flight": {k: v.max_in_flight for k, v in items},
        }
    )


async def stats_reset(world: World, request: Request) -> Response:
    world.stats.clear()
    return json_response({"ok": True})


async def faults_get(world: World, request: Request) -> Response:
    return json_response(world.faults.plan.to_json())


async def faults_put(world: World, request: Request) -> Response:
    try:
        body = await _body(request)
        merge = request.query_params.get("merge", "") in ("1", "true", "yes")
        if merge:
            plan = FaultPlan.from_json(world.faults.plan.to_json())
            plan.merge(body)
        else:
            plan = FaultPlan.from_json(body)
    except (ValueError, TypeError, FaultPlanError) as exc:
        return bad(str(exc))
    world.faults.replace(plan)
    log.info("fault plan replaced (merge=%s): %s", merge, plan)
    return json_response(plan.to_json())


async def answers(world: World, request: Request) -> Response:
    """The recorded JSON answers (plan ``record_answers`` > 0) of the routes matching
    ``?route=`` (a name or fnmatch pattern, default all), oldest first."""
    pattern = request.query_params.get("route", "*")
    out = [
        a
        for route, q in sorted(world.faults.answers.items())
        if fnmatch.fnmatchcase(route, pattern)
        for a in q
    ]
    return json_response({"answers": out})


async def answers_clear(world: World, request: Request) -> Response:
    world.faults.answers.clear()
    return json_response({"ok": True})


async def issued_secrets(world: World, request: Request) -> Response:
    """Everything secret the emulator knows or handed out: the world's credentials, the tokens
    issued (EnOS, IAM) and the signatures of the presigned links (a leak test greps for them)."""
    tokens = sorted({*world.enos_tokens, *world.iam_tokens})
    return json_response(
        {
            "credentials": world.credentials,
            "tokens": tokens,
            "presign_signatures": sorted(set(world.presigned)),
        }
    )


async def reset(world: World, request: Request) -> Response:
    world.load()
    world.stats.clear()
    return json_response({"ok": True})


async def health(world: World, request: Request) -> Response:
    return json_response({"ok": True})


def _now_ms(world: World) -> int:
    return int(world.clock() * 1000)


def _iso(world: World) -> str:
    now = world.clock()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(now))) + (
        f".{int((now % 1) * 1000):03d}Z"
    )


async def enos_file(world: World, request: Request) -> Response:
    """Change (or create) an EnOS file: ``{"orgId", "fileUri", "content": {...}}``.

    Optional: ``originalFilename``, ``assetId`` and ``attribute``/``measurepoint`` (point the
    asset's feature at the file; needed when creating), ``createTime`` (ms, default now).
    ``fileUri`` may also be a firmware ``fileUrl`` (changes the firmware's bytes).
    """
    try:
        body = await _body(request)
        org = world.orgs.get(str(body.get("orgId")))
        uri = body.get("fileUri")
        if org is None or not isinstance(uri, str):
            return bad("orgId (existing) and fileUri are required")
        new_body = Body.from_admin(body.get("content", {"key": f"admin:{uri}:{time.time()}"}))
    except (ValueError, TypeError) as exc:
        return bad(str(exc))
    ct = int(body.get("createTime") or _now_ms(world))
    for i, fw in enumerate(org["firmwares"]):
        if fw["fileUrl"] == uri:
            world.mark_changed(("enos.firmware", org["orgId"], fw["firmwareId"]), fw)
            org["firmwares"][i] = {**fw, "body": new_body, "createTime": ct}
            return json_response(
                {
                    "firmwareId": fw["firmwareId"],
                    "fileSize": new_body.size,
                    "md5": new_body.md5,
                    "createTime": ct,
                }
            )
    old = org["files"].get(uri)
    if old is None:
        if not body.get("assetId"):
            return bad("assetId is required to create a file")
        old_rec: JSON = {
            "originalFilename": uri.rsplit("/", 1)[-1],
            "category": "feature",
            "assetId": body["assetId"],
        }
    else:
        world.mark_changed(("enos.file", org["orgId"], uri), old)
        old_rec = old
    rec = {**old_rec, "body": new_body, "createTime": ct}
    if body.get("originalFilename"):
        rec["originalFilename"] = body["originalFilename"]
    if body.get("assetId"):
        rec["assetId"] = body["assetId"]
    org["files"][uri] = rec
    feature_id = body.get("attribute") or body.get("measurepoint")
    if feature_id:
        assets = org["assets"]
        idx = next((i for i, a in enumerate(assets) if a["assetId"] == rec.get("assetId")), None)
        if idx is None:
            return bad("unknown assetId")
        world.mark_changed(("enos.assets", org["orgId"]), list(assets))
        a = dict(assets[idx])
        if body.get("attribute"):
            a["attributes"] = {**a.get("attributes", {}), str(feature_id): uri}
        else:
            a["measurepoints"] = {
                **a.get("measurepoints", {}),
                str(feature_id): {"time": ct, "value": uri},
            }
        assets[idx] = a
    return json_response(
        {"fileUri": uri, "fileSize": new_body.size, "md5": new_body.md5, "createTime": ct}
    )


async def koodrive_entry(world: World, request: Request) -> Response:
    """Add, modify or delete a KooDrive entry.

    ``{"containerId", "id"?, "parentId"?, "fileName"?, "folder"?, "content"?, "delete"?}``;
    without ``id`` a new entry is created (``fileName`` required). ``editedTime`` is set to now.
    """
    try:
        body = await _body(request)
        c = world.containers.get(str(body.get("containerId")))
        if c is None:
            return bad("unknown containerId")
        entries: dict[str, JSON] = c["entries"]
        fid = body.get("id")
        old = entries.get(str(fid)) if fid else None
        if fid and old is None and not body.get("fileName"):
            return bad("unknown id")
        content: Body | None = None
        if "content" in body and body["content"] is not None:
            content = Body.from_admin(body["content"])
    except (ValueError, TypeError) as exc:
        return bad(str(exc))
    if body.get("delete"):
        if old is None:
            return bad("unknown id")
        world.mark_changed(("koodrive", c["containerId"]), dict(entries))
        gone = {old["id"]}
        changed = True
        while changed:  # remove the subtree
            changed = False
            for e in list(entries.values()):
                if e["id"] not in gone and e.get("parentId") in gone:
                    gone.add(e["id"])
                    changed = True
        for g in gone:
            entries.pop(g, None)
        return json_response({"deleted": sorted(gone)})
    now = _iso(world)
    if old is None:
        if not fid:
            fid = (
                "F"
                + hashlib.sha256(
                    f"{c['containerId']}:{now}:{len(entries)}:{body}".encode()
                ).hexdigest()[:32]
            )
        folder = bool(body.get("folder", False))
        rec: JSON = {
            "id": fid,
            "parentId": body.get("parentId", "root"),
            "fileName": body.get("fileName"),
            "folder": folder,
            "createdTime": now,
            "editedTime": now,
            "body": None if folder else (content or Body.from_bytes(b"")),
        }
    else:
        rec = dict(old)
        for key in ("parentId", "fileName"):
            if key in body:
                rec[key] = body[key]
        if content is not None:
            rec["body"] = content
        rec["editedTime"] = now
    parent = rec.get("parentId") or "root"
    if parent != "root" and not (entries.get(parent) or {}).get("folder"):
        return bad("parentId is not a folder of this container")
    world.mark_changed(("koodrive", c["containerId"]), dict(entries))
    entries[str(fid)] = rec
    out: dict[str, Any] = {k: v for k, v in rec.items() if k != "body"}
    if rec.get("body") is not None:
        out["size"] = rec["body"].size
        out["md5"] = rec["body"].md5
    return json_response(out)


def routes(world: World) -> list[Route]:
    def ep(fn: Any) -> Any:
        async def run(request: Request) -> Response:
            return await fn(world, request)  # type: ignore[no-any-return]

        return run

    return [
        Route("/_admin/health", ep(health), methods=["GET"]),
        Route("/_admin/stats", ep(stats), methods=["GET"]),
        Route("/_admin/stats/reset", ep(stats_reset), methods=["POST"]),
        Route("/_admin/faults", ep(faults_get), methods=["GET"]),
        Route("/_admin/faults", ep(faults_put), methods=["PUT"]),
        Route("/_admin/answers", ep(answers), methods=["GET"]),
        Route("/_admin/answers", ep(answers_clear), methods=["DELETE"]),
        Route("/_admin/secrets", ep(issued_secrets), methods=["GET"]),
        Route("/_admin/reset", ep(reset), methods=["POST"]),
        Route("/_admin/enos/files", ep(enos_file), methods=["POST"]),
        Route("/_admin/koodrive/entries", ep(koodrive_entry), methods=["POST"]),
    ]
