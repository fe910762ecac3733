"""What stands in front of every route: bearer auth, a body-size limit, and JSON for every error.

Every refusal is ``{"error": {"message", "type", "param", "code"}}`` (OpenAI's error shape) with a 4xx
naming the field, or a 503 with Retry-After; an unexpected failure is a plain JSON 500 that says only
that it happened (the traceback goes to the replica's log, never to the client).
"""

from __future__ import annotations

import hmac
import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .api import ApiError
from .config import ServeConfig
from ..errors import IFEngineError

log = logging.getLogger(__name__)
OPEN_PATHS = ("/health", "/ready")


def install_guards(app: FastAPI, config: ServeConfig) -> None:
    retry = str(config.limits.retry_after_s)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError):
        headers = dict(err.headers or {})
        if err.status >= 500:  # every 5xx the server itself sends says when to come back
            headers.setdefault("Retry-After", retry)
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        # the top-level field: deeper parts are list indices or pydantic's union member tags ("int")
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "form")]
        param = loc[0] if loc else "body"
        if first.get("type") == "json_invalid":
            param = "body"
        message = f"{param}: {first.get('msg', 'invalid request')}"
        return JSONResponse(ApiError(400, message, param).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException):
        if isinstance(err.__cause__, _TooLarge):  # FastAPI wraps a failed body read in a 400
            return JSONResponse(_too_large(config.limits.max_body_bytes).body(), status_code=413)
        return JSONResponse(ApiError(err.status_code, str(err.detail), None).body(), status_code=err.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception):
        log.error("unexpected error on %s", request.url.path, exc_info=err)
        body = ApiError(500, "internal error; the server log has the details", None, "server_error").body()
        return JSONResponse(body, status_code=500, headers={"Retry-After": retry})

    app.add_middleware(BodyLimit, limit=config.limits.max_body_bytes)
    app.add_middleware(BearerAuth, key=config.api_key)  # added last = runs first


async def _send_json(send, status: int, payload: dict, headers: dict | None = None) -> None:
    body = json.dumps(payload).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class BearerAuth:
    """``Authorization: Bearer <key>`` on every path but /health, when a key is configured."""

    def __init__(self, app, key: str | None):
        self.app, self.key = app, key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.key is None or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.key.encode()):
            return await self.app(scope, receive, send)
        err = ApiError(
            401,
            "authorization: missing or wrong API key (send 'Authorization: Bearer KEY')",
            "authorization",
            code="invalid_api_key",
        )
        await _send_json(send, 401, err.body(), {"WWW-Authenticate": "Bearer"})


class _TooLarge(IFEngineError):
    pass


class BodyLimit:
    """Refuse a body over ``limit`` bytes: by its Content-Length up front, else while it streams in."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self._refuse(send)
        seen = 0
        started = False

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send):
        await _send_json(send, 413, _too_large(self.limit).body())


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"body: over the limit of {limit} bytes", "body", code="request_too_large")
