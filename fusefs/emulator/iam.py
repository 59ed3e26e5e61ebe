"""IAM: ``POST /v3/auth/tokens`` (password method), huawei.md §1."""

from __future__ import annotations

import hashlib
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import auth
from .state import JSON, World
from .web import endpoint, json_response, read_json


def _error(status: int, message: str, title: str) -> Response:
    return json_response({"error": {"code": status, "message": message, "title": title}}, status)


def _hex32(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _password_user(body: Any) -> JSON | None:
    try:
        ident = body["auth"]["identity"]
        if "password" not in ident.get("methods", []):
            return None
        user = ident["password"]["user"]
        if not isinstance(user, dict):
            return None
        return user
    except (KeyError, TypeError, AttributeError):
        return None


async def create_token(world: World, request: Request) -> Response:
    try:
        body = await read_json(request)
    except ValueError:
        body = None
    user = _password_user(body)
    if user is None:
        return _error(400, "The request body is invalid", "Bad Request")
    creds = world.credentials.get("iam", {})
    domain = user.get("domain", {}) if isinstance(user.get("domain"), dict) else {}
    if (
        user.get("name") != creds.get("user")
        or user.get("password") != creds.get("password")
        or (domain.get("name") is not None and domain.get("name") != creds.get("domain"))
    ):
        return _error(401, "The username or password is wrong.", "Unauthorized")
    tok = auth.iam_issue(world, str(creds.get("user")))
    domain_json = {"id": _hex32("domain:" + str(creds.get("domain"))), "name": creds.get("domain")}
    token: JSON = {
        "expires_at": auth.iso_ms(tok.expires),
        "issued_at": auth.iso_ms(world.clock()),
        "methods": ["password"],
        "roles": [{"id": "0", "name": "te_admin"}],
        "user": {
            "domain": domain_json,
            "id": _hex32("user:" + str(creds.get("user"))),
            "name": creds.get("user"),
            "password_expires_at": "",
        },
        "catalog": [],
    }
    scope = body.get("auth", {}).get("scope") if isinstance(body, dict) else None
    if isinstance(scope, dict) and isinstance(scope.get("project"), dict):
        project = scope["project"]
        token["project"] = {
            "domain": domain_json,
            "id": project.get("id") or creds.get("projectId") or _hex32("project"),
            "name": project.get("name") or creds.get("project"),
        }
    else:
        token["domain"] = domain_json
    resp = json_response({"token": token}, 201)
    resp.headers["X-Subject-Token"] = tok.value
    return resp


def routes(world: World) -> list[Route]:
    return [
        Route(
            "/v3/auth/tokens",
            endpoint(world, "iam.token", lambda r: create_token(world, r)),
            methods=["POST"],
        ),
    ]
