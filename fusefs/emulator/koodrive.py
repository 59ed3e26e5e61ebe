"""KooDrive: folder listing, file details, space info, download links and the OBS object store
behind the presigned URLs (huawei.md §2)."""

from __future__ import annotations

import base64
import binascii
import calendar
import email.utils
import hashlib
import json
import logging
import mimetypes
import time
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import auth
from .state import JSON, Body, World
from .web import (
    UNSATISFIABLE,
    Stream,
    endpoint,
    json_response,
    parse_range,
    read_json,
    xml_response,
)

log = logging.getLogger(__name__)

ROOT_PREFIX = "DEUI7pa0C24Aroot"
SBOX_PREFIX = "DEUI7pa0C24Asbox"
FOLDER_MIME = "application/vnd.huawei-apps.folder"
MAX_PAGE = 100
MAX_DOWNLOAD_IDS = 100

ERRORS = {
    13000102: "Verify parameters failed.",
    13000301: "Space not found.",
    13000302: "File is not in the specified space.",
    13000309: "Resource not found.",
    13000406: "Operation not allowed on a folder.",
}

_TYPES = [
    (("jpg", "jpeg", "png", "gif", "bmp", "webp", "tif", "tiff"), "15"),
    (("mp4", "avi", "mov", "mkv", "wmv"), "20"),
    (("doc", "docx"), "26"),
    (("xls", "xlsx", "csv"), "27"),
    (("ppt", "pptx"), "28"),
    (("mp3", "wav", "flac", "aac"), "30"),
    (("zip", "rar", "7z", "tar", "gz", "tgz", "bz2", "xz"), "35"),
    (("apk", "ipa"), "40"),
]


class KooError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(ERRORS.get(code, "Bad Request"))
        self.code = code


def error_response(code: int) -> Response:
    return json_response({"code": code, "msg": ERRORS.get(code, "Bad Request")}, 400)


def unauthorized() -> Response:
    return json_response({"code": 401, "msg": "Unauthorized"}, 401)


def suffix_of(name: str) -> str:
    stem, dot, ext = name.rpartition(".")
    return ext if dot and stem else ""


def file_type_of(entry: JSON) -> str:
    if entry.get("folder"):
        return "10"
    ext = suffix_of(entry["fileName"]).lower()
    for exts, code in _TYPES:
        if ext in exts:
            return code
    return "45"


def mime_of(entry: JSON) -> str:
    if entry.get("folder"):
        return FOLDER_MIME
    if entry.get("mimeType"):
        return str(entry["mimeType"])
    guess, _ = mimetypes.guess_type(entry["fileName"])
    return guess or "application/octet-stream"


def _user(world: World) -> JSON:
    uid = str(world.credentials.get("koodrive", {}).get("userId", "369528171409614001"))
    return {
        "category": "drive#user",
        "me": True,
        "permissionId": "1243622029865966464",
        "userId": uid,
        "displayName": "emulator user",
    }


def entry_json(world: World, container: JSON, e: JSON) -> JSON:
    cid = container["containerId"]
    parent = e.get("parentId") or "root"
    user = _user(world)
    out: JSON = {
        "category": "drive#file",
        "id": e["id"],
        "fileName": e["fileName"],
        "mimeType": mime_of(e),
        "fileSuffix": "" if e.get("folder") else suffix_of(e["fileName"]),
        "recycled": False,
        "parentFolder": [ROOT_PREFIX + cid if parent == "root" else parent],
        "containers": [cid],
        "properties": {"createUser": user["userId"], "lastEditUser": user["userId"]},
        "owners": [user],
        "lastEditor": user,
        "fileType": file_type_of(e),
        "createdTime": e.get("createdTime"),
        "editedTime": e.get("editedTime") or e.get("createdTime"),
        "favorite": False,
    }
    body: Body | None = e.get("body")
    if not e.get("folder"):
        out["size"] = body.size if body is not None else 0
    return out


def _str_int(value: Any, default: int | None) -> int | None:
    """KooDrive numbers may come as ints or strings; ``""``/missing means absent."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise KooError(13000102)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise KooError(13000102) from None


def _encode_cursor(parent: str, offset: int, page: int) -> str:
    raw = json.dumps({"p": parent, "o": offset, "n": page}, separators=(",", ":")).encode()
    return "0|" + base64.urlsafe_b64encode(raw).decode()


def _decode_cursor(cursor: str, parent: str) -> tuple[int, int]:
    try:
        if not cursor.startswith("0|"):
            raise ValueError(cursor)
        obj = json.loads(base64.urlsafe_b64decode(cursor[2:].encode()))
        if obj["p"] != parent:
            raise ValueError("cursor of another folder")
        return int(obj["o"]), int(obj["n"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise KooError(13000102) from None


async def _body(request: Request) -> JSON:
    try:
        body = await read_json(request)
    except ValueError:
        raise KooError(13000102) from None
    if not isinstance(body, dict):
        raise KooError(13000102)
    return body


def _container(world: World, body: JSON) -> JSON:
    cid = body.get("containerId")
    if not cid or not isinstance(cid, str):
        raise KooError(13000102)
    c = world.containers.get(cid)
    if c is None:
        raise KooError(13000301)
    return c


_SORT_KEYS = {
    1: lambda e: (e["fileName"], e["id"]),
    2: lambda e: ((e["body"].size if e.get("body") else 0), e["id"]),
    3: lambda e: (e.get("createdTime") or "", e["id"]),
    4: lambda e: (e.get("editedTime") or e.get("createdTime") or "", e["id"]),
}


async def list_folder(world: World, request: Request) -> Response:
    if not await auth.koodrive_auth_ok(world, request):
        return unauthorized()
    try:
        space_type = request.path_params["type"]
        group_id = request.path_params.get("groupId")
        body = await _body(request)
        c = _container(world, body)
        if group_id is not None and str(c.get("groupId")) != group_id:
            raise KooError(13000301)
        if space_type not in ("0", "1"):
            raise KooError(13000102)
        parent = body.get("parentFileId")
        if not parent or not isinstance(parent, str):
            raise KooError(13000102)
        cid = c["containerId"]
        entries: dict[str, JSON] = world.listed(("koodrive", cid), c["entries"])
        if parent == ROOT_PREFIX + cid:
            parent = "root"
        if parent not in ("root", "sbox"):
            folder = entries.get(parent)
            if folder is None:
                raise KooError(13000309)
            if not folder.get("folder"):
                raise KooError(13000102)
        page_info = body.get("pageInfo") or {}
        sort_info = body.get("sortInfo") or {}
        if not isinstance(page_info, dict) or not isinstance(sort_info, dict):
            raise KooError(13000102)
        size = _str_int(page_info.get("pageSize"), MAX_PAGE)
        assert size is not None
        if not 1 <= size <= MAX_PAGE:
            raise KooError(13000102)
        cursor = page_info.get("pageCursor") or ""
        offset, page_no = _decode_cursor(str(cursor), parent) if cursor else (0, 0)
        sort_type = _str_int(sort_info.get("sortType"), 1) or 1
        direction = _str_int(sort_info.get("sortDirection"), 1) or 1
        if sort_type not in _SORT_KEYS or direction not in (1, 2):
            sort_type, direction = 1, 1
        want_type = body.get("fileType") or ""
        if space_type == "1" or parent == "sbox":
            items: list[JSON] = []
        else:
            items = [e for e in entries.values() if (e.get("parentId") or "root") == parent]
            if want_type:
                items = [e for e in items if file_type_of(e) == str(want_type)]
            items.sort(key=_SORT_KEYS[sort_type], reverse=direction == 2)
    except KooError as err:
        return error_response(err.code)

    plan = world.faults.plan
    every = int(plan.koodrive_empty_every or 0)
    if plan.koodrive_page_limit:
        size = max(1, min(size, int(plan.koodrive_page_limit)))
    if every > 0 and offset < len(items) and (page_no + 1) % every == 0:
        page: list[JSON] = []  # injected empty non-final page
    else:
        page = items[offset : offset + size]
    next_offset = offset + len(page)
    out: JSON = {"category": "drive#fileList"}
    last = next_offset >= len(items)
    if not last:
        out["nextCursor"] = _encode_cursor(parent, next_offset, page_no + 1)
    out["searchCompleted"] = last
    out["files"] = [entry_json(world, c, e) for e in page]
    out["code"] = 0
    out["msg"] = "success"
    return json_response(out)


def _find_entry(world: World, c: JSON, file_id: str) -> JSON:
    e = c["entries"].get(file_id)
    if e is not None:
        return e  # type: ignore[no-any-return]
    if any(file_id in other["entries"] for other in world.containers.values()):
        raise KooError(13000302)
    raise KooError(13000309)


async def file_detail(world: World, request: Request) -> Response:
    if not await auth.koodrive_auth_ok(world, request):
        return unauthorized()
    try:
        body = await _body(request)
        c = _container(world, body)
        e = _find_entry(world, c, request.path_params["fileId"])
    except KooError as err:
        return error_response(err.code)
    return json_response({**entry_json(world, c, e), "code": 0, "msg": "success"})


async def space_info(world: World, request: Request) -> Response:
    if not await auth.koodrive_auth_ok(world, request):
        return unauthorized()
    c = world.containers.get(request.path_params["containerId"])
    if c is None:
        return error_response(13000301)
    used = sum(e["body"].size for e in c["entries"].values() if e.get("body") is not None)
    uid = str(world.credentials.get("koodrive", {}).get("userId", ""))
    cid = c["containerId"]
    data = {
        "type": str(c.get("type", "0")),
        "status": "0",
        "name": c.get("name"),
        "ownerId": str(c.get("groupId") or uid),
        "containerId": cid,
        "bizRootFileId": ROOT_PREFIX + cid,
        "bizSboxFileId": SBOX_PREFIX + cid,
        "capacity": max(used * 2, 1 << 40),
        "spaceUsed": used,
        "administrators": [uid],
        "tenantId": "tenant0000000001",
        "creator": uid,
        "createTime": "2023-01-01T00:00:00.000Z",
        "modifier": uid,
        "updateTime": "2023-01-01T00:00:00.000Z",
    }
    return json_response({"code": 0, "msg": "success", "data": data})


def object_key(cid: str, file_id: str, md5: str) -> str:
    return hashlib.sha256(f"{cid}/{file_id}/{md5}".encode()).hexdigest()[:35]


async def download_links(world: World, request: Request) -> Response:
    if not await auth.koodrive_auth_ok(world, request):
        return unauthorized()
    try:
        body = await _body(request)
        c = _container(world, body)
        ids = body.get("fileIds")
        if (
            not isinstance(ids, list)
            or not ids
            or len(ids) > MAX_DOWNLOAD_IDS
            or not all(isinstance(i, str) for i in ids)
        ):
            raise KooError(13000102)
    except KooError as err:
        return error_response(err.code)
    base = str(request.base_url)
    downloads: list[JSON] = []
    ok = 0
    for fid in ids:
        item: JSON = {"fileId": fid}
        try:
            e = _find_entry(world, c, fid)
            if e.get("folder"):
                raise KooError(13000406)
            body_: Body = e["body"]
            disposition = (
                'attachment; filename="'
                + quote(e["fileName"], safe="", errors="surrogatepass")
                + '"'
            )
            blob = body_.content.blob if body_.content is not None else None
            if world.link_base is not None and blob is not None:
                # the bytes live on an external static server holding the world dir
                path = "/" + quote(blob, safe="/", errors="surrogatepass")
                item["url"] = auth.presign_url(world, world.link_base, path, disposition)
            else:
                key = object_key(c["containerId"], fid, body_.md5)
                world.obs_objects[key] = (c["containerId"], fid, body_.md5)
                item["url"] = auth.obs_presign(world, base, key, disposition)
            item["fileName"] = e["fileName"]
            item["code"] = "0"
            item["msg"] = "success"
            ok += 1
        except KooError as err:
            item["code"] = str(err.code)
            item["msg"] = ERRORS.get(err.code, "Bad Request")
        downloads.append(item)
    batch = 1 if ok == len(ids) else (2 if ok == 0 else 0)
    return json_response({"downloads": downloads, "batchCode": batch, "code": 0, "msg": "Success."})


def _http_date(iso: str | None) -> str:
    if not iso:
        return email.utils.formatdate(0, usegmt=True)
    try:
        t = calendar.timegm(time.strptime(iso[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        t = 0
    return email.utils.formatdate(t, usegmt=True)


async def obs_get(world: World, request: Request) -> Response:
    bad = auth.obs_verify(world, request)
    if bad == "signature":
        return xml_response(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. "
            "Check your key and signing method.",
        )
    if bad == "expired":
        return xml_response(403, "AccessDenied", "Request has expired")
    key = request.path_params["key"]
    ref = world.obs_objects.get(key)
    entry: JSON | None = None
    if ref is not None and request.path_params["bucket"] == auth.OBS_BUCKET:
        c = world.containers.get(ref[0])
        entry = c["entries"].get(ref[1]) if c is not None else None
        if entry is not None and (entry.get("body") is None or entry["body"].md5 != ref[2]):
            entry = None
    if entry is None:
        return xml_response(
            404, "NoSuchKey", "The specified key does not exist.", f"<Key>{key}</Key>"
        )
    body: Body = entry["body"]
    headers = {
        "ETag": f'"{body.md5}"',
        "Last-Modified": _http_date(entry.get("editedTime") or entry.get("createdTime")),
        "Accept-Ranges": "bytes",
    }
    disp = request.query_params.get("response-content-disposition")
    if disp:
        headers["Content-Disposition"] = disp
    media = mime_of(entry)
    rng = parse_range(request.headers.get("range"), body.size)
    if rng is None or rng == UNSATISFIABLE:  # OBS: an invalid range returns the whole object
        return Stream(
            body.iter(world.dir, 0, body.size), body.size, headers=headers, media_type=media
        )
    first, last = rng
    headers["Content-Range"] = f"bytes {first}-{last}/{body.size}"
    n = last - first + 1
    return Stream(
        body.iter(world.dir, first, n), n, status_code=206, headers=headers, media_type=media
    )


def routes(world: World) -> list[Route]:
    def ep(name: str, fn: Any) -> Any:
        return endpoint(world, name, lambda r: fn(world, r))

    p = "/koodrive/ose/v1"
    return [
        Route(
            f"{p}/files/download", ep("koodrive.download_links", download_links), methods=["POST"]
        ),
        Route(f"{p}/files/{{fileId}}/detail", ep("koodrive.detail", file_detail), methods=["POST"]),
        Route(f"{p}/files/{{type}}", ep("koodrive.list", list_folder), methods=["POST"]),
        Route(
            f"{p}/files/{{groupId}}/{{type}}", ep("koodrive.list", list_folder), methods=["POST"]
        ),
        Route(
            f"{p}/space/container/{{containerId}}",
            ep("koodrive.space", space_info),
            methods=["GET"],
        ),
        Route("/obs/{bucket}/{key:path}", ep("koodrive.obs", obs_get), methods=["GET"]),
    ]
