"""EnOS: token service, metadata search/get APIs, file and firmware downloads (enos.md)."""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import auth
from .expression import ExpressionError, compile_expression
from .state import JSON, Body, World
from .web import UNSATISFIABLE, Stream, endpoint, json_response, parse_range, read_json

log = logging.getLogger(__name__)

TOKEN_BUSINESS = "apim-token-service"


class EnosError(Exception):
    """A business error: envelope ``code``/``msg``; ``http`` used on binary routes only."""

    def __init__(self, code: int, msg: str, http: int = 400) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.http = http


def not_found(msg: str, code: int = 99404) -> EnosError:
    return EnosError(code, msg, 404)


def envelope(data: Any, pagination: JSON | None = None) -> Response:
    body: JSON = {"code": 0, "msg": "OK", "requestId": str(uuid.uuid4()), "data": data}
    if pagination is not None:
        body["pagination"] = pagination
    return json_response(body)


def error_envelope(err: EnosError, http: int = 200) -> Response:
    return json_response(
        {"code": err.code, "msg": err.msg, "requestId": str(uuid.uuid4()), "data": None}, http
    )


def gateway_401() -> Response:
    return json_response({"message": "Invalid authentication credentials"}, 401)


# ---- token service ---------------------------------------------------------------------------


def _token_reply(status: int, msg: str, data: JSON | None = None) -> Response:
    return json_response({"status": status, "msg": msg, "business": TOKEN_BUSINESS, "data": data})


def _check_token_request(world: World, body: Any) -> tuple[str, Response | None]:
    """Validate appKey/encryption/timestamp; returns (appKey, error response or None)."""
    if not isinstance(body, dict):
        return "", _token_reply(1004, "Invalid parameter")
    app_key, enc, ts = body.get("appKey"), body.get("encryption"), body.get("timestamp")
    if app_key in (None, "") or enc in (None, "") or ts in (None, ""):
        return "", _token_reply(1202, "The parameter is empty")
    if isinstance(ts, bool) or not isinstance(ts, int | str):
        return "", _token_reply(1004, "Invalid parameter")
    ts_text = str(ts).strip()
    if not ts_text.isdigit():
        return "", _token_reply(1004, "Invalid parameter")
    creds = world.credentials.get("enos", {})
    if app_key != creds.get("appKey"):
        return "", _token_reply(1002, "The appKey does not exist")
    skew = float(world.faults.plan.enos_timestamp_skew)
    if skew > 0 and abs(int(ts_text) / 1000.0 - world.clock()) > skew:
        return "", _token_reply(1004, "Invalid parameter: timestamp")
    want = auth.enos_encryption(str(app_key), ts_text, str(creds.get("appSecret", "")))
    if str(enc).lower() != want:
        return "", _token_reply(1003, "The encryption is not valid")
    return str(app_key), None


async def token_get(world: World, request: Request) -> Response:
    try:
        body = await read_json(request)
    except ValueError:
        body = None
    app_key, err = _check_token_request(world, body)
    if err is not None:
        return err
    tok = world.enos_current.get(app_key)
    if tok is None or tok.expires <= world.clock():
        tok = auth.enos_issue(world, app_key)
        remaining = int(world.faults.plan.enos_token_lifetime)
    else:  # the same token while it is valid, with its remaining lifetime [C]/[I]
        remaining = max(1, math.floor(tok.expires - world.clock()))
    return _token_reply(0, "SUCCESS", {"accessToken": tok.value, "expire": remaining})


async def token_refresh(world: World, request: Request) -> Response:
    try:
        body = await read_json(request)
    except ValueError:
        body = None
    app_key, err = _check_token_request(world, body)
    if err is not None:
        return err
    assert isinstance(body, dict)
    old = body.get("accessToken")
    if not old:
        return _token_reply(1202, "The parameter is empty")
    tok = world.enos_tokens.get(str(old))
    if tok is None or tok.subject != app_key:
        return _token_reply(1204, "Failed to refresh access token")
    if tok.expires <= world.clock():
        return _token_reply(1203, "The access token has expired")
    new = auth.enos_issue(world, app_key)
    return _token_reply(
        0,
        "SUCCESS",
        {"accessToken": new.value, "expire": int(world.faults.plan.enos_token_lifetime)},
    )


# ---- shapes -----------------------------------------------------------------------------------


def i18n(value: Any, default: str = "") -> JSON:
    if isinstance(value, dict):
        return {
            "defaultValue": value.get("defaultValue", default),
            "i18nValue": value.get("i18nValue", {}),
        }
    return {"defaultValue": str(value) if value is not None else default, "i18nValue": {}}


def asset_json(org: JSON, a: JSON) -> JSON:
    model = org["models"].get(a.get("modelId"), {})
    return {
        "orgId": org["orgId"],
        "assetId": a["assetId"],
        "modelId": a.get("modelId"),
        "modelIdPath": model.get("modelIdPath", "/" + str(a.get("modelId"))),
        "name": i18n(a.get("name")),
        "timezone": a.get("timezone", "+08:00"),
        "desc": a.get("desc"),
        "attributes": dict(a.get("attributes", {})),
        "tags": dict(a.get("tags", {})),
        "createTime": a.get("createTime"),
    }


def _product(org: JSON, pk: str | None) -> JSON:
    for p in org["products"]:
        if p["productKey"] == pk:
            return p  # type: ignore[no-any-return]
    return {}


def device_json(org: JSON, a: JSON) -> JSON:
    model = org["models"].get(a.get("modelId"), {})
    product = _product(org, a.get("productKey"))
    ct = a.get("createTime")
    return {
        "orgId": org["orgId"],
        "assetId": a["assetId"],
        "modelId": a.get("modelId"),
        "modelIdPath": model.get("modelIdPath", "/" + str(a.get("modelId"))),
        "productKey": a["productKey"],
        "productName": i18n(product.get("productName"), a["productKey"]),
        "productType": product.get("productType", "Device"),
        "dataFormat": product.get("dataFormat", "Json"),
        "deviceKey": a["deviceKey"],
        "deviceName": i18n(a.get("name")),
        "deviceSecret": "s" + a["assetId"] * 2,
        "deviceDesc": a.get("desc"),
        "timezone": a.get("timezone", "+08:00"),
        "deviceAttributes": dict(a.get("attributes", {})),
        "deviceTags": dict(a.get("tags", {})),
        "createTime": ct,
        "status": a.get("status", "online"),
        "activeTime": ct,
        "lastOnlineTime": ct,
        "lastOfflineTime": None,
        "measurepointLastUpdate": None,
        "eventLastUpdate": None,
        "attributeLastUpdate": None,
        "featureLastUpdate": None,
    }


def product_json(org: JSON, p: JSON) -> JSON:
    return {
        "orgId": org["orgId"],
        "productKey": p["productKey"],
        "productName": i18n(p.get("productName"), p["productKey"]),
        "productSecret": "ps" + p["productKey"],
        "productDesc": p.get("productDesc"),
        "productType": p.get("productType", "Device"),
        "dataFormat": p.get("dataFormat", "Json"),
        "productTags": dict(p.get("productTags", {})),
        "modelId": p.get("modelId"),
        "dynamicActiveEnabled": False,
        "biDirectionalAuth": False,
        "createBy": "emulator",
        "createTime": p.get("createTime"),
        "updateBy": "emulator",
        "updateTime": p.get("createTime"),
        "defaultValidDay": None,
        "maxValidDay": None,
    }


def firmware_json(org: JSON, fw: JSON) -> JSON:
    body: Body = fw["body"]
    out: JSON = {
        "orgId": org["orgId"],
        "firmwareId": fw["firmwareId"],
        "productKey": fw.get("productKey"),
        "name": i18n(fw.get("name")),
        "version": fw.get("version"),
        "desc": fw.get("desc"),
        "signMethod": fw.get("signMethod", "md5"),
        "sign": body.md5 if fw.get("signMethod", "md5") == "md5" else fw.get("sign", body.md5),
        "fileUrl": fw["fileUrl"],
        "fileSize": body.size,
        "isVerified": fw.get("isVerified", False),
        "enableVerification": fw.get("enableVerification", False),
        "createTime": fw.get("createTime"),
        "firmwareTags": dict(fw.get("firmwareTags", {})),
        "maxAllowedForVerification": fw.get("maxAllowedForVerification", 5),
        "minSuccessForVerified": fw.get("minSuccessForVerified", 2),
    }
    return out


def file_meta_json(org: JSON, category: str, uri: str, rec: JSON) -> JSON:
    body: Body = rec["body"]
    return {
        "orgId": org["orgId"],
        "category": category,
        "fileUri": uri,
        # the stored name as it is, even empty: the client must cope (world.json is the truth)
        "originalFilename": rec.get("originalFilename", uri.rsplit("/", 1)[-1]),
        "fileSize": body.size,
        "md5": body.md5,
        "signMethod": "md5",
        "sign": body.md5,
        "createTime": rec.get("createTime"),
    }


# ---- request helpers ---------------------------------------------------------------------------


def _int_field(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise EnosError(99400, f"Invalid Argument {name}: not a number")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise EnosError(99400, f"Invalid Argument {name}: not a number") from None


def paginate(items: list[JSON], body: JSON, default: int, maximum: int) -> tuple[list[JSON], JSON]:
    pag = body.get("pagination") or {}
    if not isinstance(pag, dict):
        raise EnosError(99400, "Invalid Argument pagination")
    page_no = _int_field(pag.get("pageNo", 1), "pagination.pageNo")
    size = _int_field(pag.get("pageSize", default), "pagination.pageSize")
    if page_no < 1:
        raise EnosError(99400, "Invalid Argument pagination.pageNo: must be >= 1")
    if size < 1 or size > maximum:
        raise EnosError(99400, f"Invalid Argument pagination.pageSize: must be 1..{maximum}")
    start = (page_no - 1) * size
    page = items[start : start + size]
    return page, {"sortedBy": None, "pageNo": page_no, "pageSize": size, "totalSize": len(items)}


def _filter(
    items: list[JSON], body: JSON, fields: set[str], row: Callable[[JSON], JSON]
) -> list[JSON]:
    try:
        pred = compile_expression(body.get("expression"), fields)
    except ExpressionError as exc:
        raise EnosError(99400, f"Invalid Argument expression: {exc}") from None
    return [x for x in items if pred(row(x))]


def find_asset(org: JSON, q: Any, devices_only: bool = False) -> JSON:
    asset_id = q.get("assetId")
    pk, dk = q.get("productKey"), q.get("deviceKey")
    if not asset_id and not (pk and dk):
        raise EnosError(
            99400, "Invalid Argument assetId: assetId or productKey+deviceKey is required"
        )
    for a in org["assets"]:
        if asset_id:
            if a["assetId"] == asset_id:
                if devices_only and not a.get("deviceKey"):
                    break
                return a  # type: ignore[no-any-return]
        elif a.get("productKey") == pk and a.get("deviceKey") == dk:
            return a  # type: ignore[no-any-return]
    raise not_found("Device cannot be found" if devices_only else "Asset not found")


async def _json_body(request: Request) -> JSON:
    try:
        body = await read_json(request)
    except ValueError:
        raise EnosError(99400, "Invalid Argument body: malformed JSON") from None
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise EnosError(99400, "Invalid Argument body: must be an object")
    return body


# ---- metadata handlers (HTTP 200 for business errors) --------------------------------------------

OrgHandler = Callable[[World, Request, JSON], Awaitable[Response]]


async def search_asset(world: World, request: Request, org: JSON) -> Response:
    body = await _json_body(request)
    assets = world.listed(("enos.assets", org["orgId"]), org["assets"])
    fields = {"assetId", "modelId", "productKey", "deviceKey", "rootModelId", "treeId"}
    rows = _filter(assets, body, fields, lambda a: {**a, "rootModelId": a.get("modelId")})
    rows = sorted(rows, key=lambda a: a["assetId"])
    page, pag = paginate(rows, body, 100, 1000)
    return envelope([asset_json(org, a) for a in page], pag)


async def search_device(world: World, request: Request, org: JSON) -> Response:
    body = await _json_body(request)
    assets = world.listed(("enos.assets", org["orgId"]), org["assets"])
    devices = [a for a in assets if a.get("deviceKey")]
    fields = {"assetId", "modelId", "productKey", "deviceKey", "status", "productType"}
    rows = _filter(devices, body, fields, lambda a: device_json(org, a))
    rows = sorted(rows, key=lambda a: (-(a.get("createTime") or 0), a["assetId"]))
    page, pag = paginate(rows, body, 10, 200)
    return envelope([device_json(org, a) for a in page], pag)


async def get_device(world: World, request: Request, org: JSON) -> Response:
    return envelope(device_json(org, find_asset(org, request.query_params, devices_only=True)))


async def get_asset(world: World, request: Request, org: JSON) -> Response:
    return envelope(asset_json(org, find_asset(org, request.query_params)))


async def search_product(world: World, request: Request, org: JSON) -> Response:
    body = await _json_body(request)
    rows = _filter(org["products"], body, {"productKey", "modelId"}, lambda p: p)
    rows = sorted(rows, key=lambda p: (-(p.get("createTime") or 0), p["productKey"]))
    page, pag = paginate(rows, body, 10, 200)
    return envelope([product_json(org, p) for p in page], pag)


async def get_product(world: World, request: Request, org: JSON) -> Response:
    pk = request.query_params.get("productKey")
    if not pk:
        raise EnosError(99400, "Invalid Argument productKey: productKey is missing")
    p = _product(org, pk)
    if not p:
        raise EnosError(11611, "Not found")
    return envelope(product_json(org, p))


async def get_model(world: World, request: Request, org: JSON) -> Response:
    model_id = request.query_params.get("modelId")
    if not model_id:
        raise EnosError(99400, "Invalid Argument modelId: modelId is missing")
    model = org["models"].get(model_id)
    if model is None:
        raise EnosError(99404, "Model not found")
    data = {
        "orgId": org["orgId"],
        "desc": None,
        "tags": {},
        "services": {},
        "events": {},
        "attributes": {},
        "measurepoints": {},
        **model,
    }
    return envelope(data)


async def query_latest(world: World, request: Request, org: JSON) -> Response:
    body = await _json_body(request)
    a = find_asset(org, request.query_params)
    ids = body.get("measurepointIds")
    out = []
    for mp_id, point in a.get("measurepoints", {}).items():
        if ids and mp_id not in ids:
            continue
        out.append({"id": mp_id, "time": str(point.get("time")), "value": point.get("value")})
    return envelope(out)


async def search_firmware(world: World, request: Request, org: JSON) -> Response:
    body = await _json_body(request)
    fws = [
        world.listed(("enos.firmware", org["orgId"], f["firmwareId"]), f) for f in org["firmwares"]
    ]
    rows = _filter(
        fws,
        body,
        {"productKey", "isVerified", "firmwareId", "version"},
        lambda f: {**f, "isVerified": f.get("isVerified", False)},
    )
    rows = sorted(rows, key=lambda f: (-(f.get("createTime") or 0), f["firmwareId"]))
    page, pag = paginate(rows, body, 10, 200)
    return envelope([firmware_json(org, f) for f in page], pag)


def _firmware(org: JSON, firmware_id: str | None) -> JSON:
    if not firmware_id:
        raise EnosError(99400, "Invalid Argument firmwareId: firmwareId is missing")
    for f in org["firmwares"]:
        if f["firmwareId"] == firmware_id:
            return f  # type: ignore[no-any-return]
    raise not_found("Firmware not found", 24404)


async def get_firmware(world: World, request: Request, org: JSON) -> Response:
    return envelope(firmware_json(org, _firmware(org, request.query_params.get("firmwareId"))))


def _file(world: World, org: JSON, request: Request, listing: bool) -> tuple[str, str, JSON]:
    q = request.query_params
    uri = q.get("fileUri")
    category = q.get("category")
    if not uri:
        raise EnosError(99400, "Invalid Argument fileUri: fileUri is missing")
    if category not in ("feature", "ota"):
        raise EnosError(99400, "Invalid Argument category: must be feature or ota")
    asset = find_asset(org, q)
    rec: JSON | None = None
    if category == "feature":
        f = org["files"].get(uri)
        if (
            f is not None
            and f.get("category", "feature") == "feature"
            and (f.get("assetId") in (None, asset["assetId"]))
        ):
            rec = world.listed(("enos.file", org["orgId"], uri), f) if listing else f
    else:
        f = org["files"].get(uri)
        if f is not None and f.get("category") == "ota":
            rec = f
        for fw in org["firmwares"]:
            if fw["fileUrl"] == uri and fw.get("productKey") in (None, asset.get("productKey")):
                rec = (
                    world.listed(("enos.firmware", org["orgId"], fw["firmwareId"]), fw)
                    if listing
                    else fw
                )
                rec = {**rec, "originalFilename": uri.rsplit("/", 1)[-1]}
    if rec is None:
        raise not_found("File not found")
    return str(uri), str(category), rec


async def file_info(world: World, request: Request, org: JSON) -> Response:
    uri, category, rec = _file(world, org, request, listing=True)
    return envelope(file_meta_json(org, category, uri, rec))


# ---- binary handlers ---------------------------------------------------------------------------


def stream_body(world: World, request: Request, body: Body, filename: str) -> Response:
    headers = {
        "Content-Disposition": "attachment; filename*=UTF-8''"
        + quote(filename, safe="", errors="surrogatepass")
    }
    if not world.faults.plan.enos_range:
        return Stream(body.iter(world.dir, 0, body.size), body.size, headers=headers)
    headers["Accept-Ranges"] = "bytes"
    rng = parse_range(request.headers.get("range"), body.size)
    if rng is None:
        return Stream(body.iter(world.dir, 0, body.size), body.size, headers=headers)
    if rng == UNSATISFIABLE:
        return Response(
            b"",
            status_code=416,
            headers={"Content-Range": f"bytes */{body.size}", "Accept-Ranges": "bytes"},
        )
    first, last = rng
    headers["Content-Range"] = f"bytes {first}-{last}/{body.size}"
    n = last - first + 1
    return Stream(body.iter(world.dir, first, n), n, status_code=206, headers=headers)


async def download_file(world: World, request: Request, org: JSON) -> Response:
    uri, _category, rec = _file(world, org, request, listing=False)
    return stream_body(world, request, rec["body"], rec.get("originalFilename") or uri)


async def download_firmware(world: World, request: Request, org: JSON) -> Response:
    fw = _firmware(org, request.query_params.get("firmwareId"))
    return stream_body(world, request, fw["body"], fw["fileUrl"].rsplit("/", 1)[-1])


# ---- routing -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Action:
    name: str
    method: str
    handler: OrgHandler
    binary: bool = False


RESOURCES: dict[str, dict[str, Action]] = {
    "/asset-tree-service/v2.1/asset-nodes": {
        "searchAsset": Action("enos.asset.search", "POST", search_asset),
    },
    "/asset-service/v2.1/assets": {"get": Action("enos.asset.get", "GET", get_asset)},
    "/connect-service/v2.1/devices": {
        "search": Action("enos.device.search", "POST", search_device),
        "get": Action("enos.device.get", "GET", get_device),
    },
    "/connect-service/v2.1/products": {
        "search": Action("enos.product.search", "POST", search_product),
        "get": Action("enos.product.get", "GET", get_product),
    },
    "/model-service/v2.1/thing-models": {"get": Action("enos.model.get", "GET", get_model)},
    "/connect-service/v2.1/measurepoints": {
        "queryLatest": Action("enos.measurepoint.latest", "POST", query_latest),
    },
    "/connect-service/v2.1/files": {
        "download": Action("enos.download", "GET", download_file, binary=True),
        "getFileInfo": Action("enos.file.info", "GET", file_info),
    },
    "/connect-service/v2.1/ota-firmwares": {
        "search": Action("enos.firmware.search", "POST", search_firmware),
        "get": Action("enos.firmware.get", "GET", get_firmware),
    },
    "/connect-service/v2.5/files": {
        "downloadFirmwareFile": Action(
            "enos.firmware.download", "GET", download_firmware, binary=True
        ),
    },
}


def _resource_route(world: World, path: str, actions: dict[str, Action]) -> Route:
    prefix = path.strip("/").split("/", 1)[0].replace("-service", "")

    def name(request: Request) -> str:
        act = actions.get(request.query_params.get("action", ""))
        return act.name if act is not None else f"enos.{prefix}.other"

    async def handle(request: Request) -> Response:
        action = request.query_params.get("action")
        act = actions.get(action or "")
        binary = act.binary if act is not None else False
        try:
            if not auth.enos_token_ok(world, request):
                return gateway_401()
            if not action:
                raise EnosError(99400, "Invalid Argument action:action is missing")
            if act is None:
                raise EnosError(99400, f"Invalid Argument action:action {action} is not supported")
            if request.method != act.method and not (
                request.method == "HEAD" and act.method == "GET"
            ):
                return json_response({"message": "Method Not Allowed"}, 405)
            org_id = request.query_params.get("orgId")
            if not org_id:
                raise EnosError(99400, "Invalid Argument orgId:orgId is missing")
            org = world.orgs.get(org_id)
            if org is None:
                raise EnosError(99403, f"Denied resource:  orgId {org_id}", 403)
            return await act.handler(world, request, org)
        except EnosError as err:
            return error_envelope(err, err.http if binary else 200)

    return Route(path, endpoint(world, name, handle), methods=["GET", "POST"])


def routes(world: World) -> list[Route]:
    out = [
        Route(
            "/apim-token-service/v2.0/token/get",
            endpoint(world, "enos.token.get", lambda r: token_get(world, r)),
            methods=["POST"],
        ),
        Route(
            "/apim-token-service/v2.0/token/refresh",
            endpoint(world, "enos.token.refresh", lambda r: token_refresh(world, r)),
            methods=["POST"],
        ),
    ]
    out += [_resource_route(world, path, acts) for path, acts in RESOURCES.items()]
    return out
