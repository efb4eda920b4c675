"""Error answers in OpenAI's shape, `{"error": {"message", "type", "code"}}`, and the
guards that produce them before a request reaches a handler (body size, API key)."""

from __future__ import annotations

import hmac
import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    503: "server_overloaded",
}


class ApiError(Exception):
    """An error answer: HTTP status, message, machine-readable code, extra headers."""

    def __init__(self, status: int, message: str, code: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers


def error_body(status: int, message: str, code: str | None) -> dict:
    return {"error": {"message": message, "type": TYPES.get(status, "server_error"), "code": code}}


def error_response(status: int, message: str, code: str | None, headers=None) -> JSONResponse:
    return JSONResponse(error_body(status, message, code), status_code=status, headers=headers)


def install_handlers(app: FastAPI) -> None:
    """Every error the app can give, in one shape."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, err: ApiError):
        return error_response(err.status, err.message, err.code, err.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        if first.get("type") == "json_invalid":
            return error_response(400, "the body is not valid JSON", "invalid_json")
        return error_response(422, f"{where}: {first.get('msg', 'invalid')}", "invalid_field")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException):
        code = "invalid_body" if err.status_code == 400 else None
        return error_response(err.status_code, str(err.detail), code, getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, err: Exception):
        return error_response(500, f"internal error: {type(err).__name__}", "internal_error")


class BodyLimit:
    """ASGI middleware: a body over `limit` bytes gets 413 before it is read whole."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        # No declared length (a chunked body): read it here, up to the limit, then replay.
        messages, seen = [], 0
        while True:
            message = await receive()
            messages.append(message)
            seen += len(message.get("body", b""))
            if seen > self.limit:
                return await self._refuse(send)
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        replay = iter(messages)

        async def replayed():
            return next(replay, None) or await receive()

        await self.app(scope, replayed, send)

    async def _refuse(self, send):
        mb = self.limit / 2**20
        body = json.dumps(error_body(413, f"body over the {mb:g} MB limit", "body_too_large"))
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body.encode()})


def check_key(request: Request, key: str | None) -> None:
    """`Authorization: Bearer KEY` (or `api-key: KEY`) when the server has a key.

    Raises:
        ApiError: 401, the key is missing or wrong.
    """
    if key is None:
        return
    given = request.headers.get("authorization", "")
    token = given[7:] if given.lower().startswith("bearer ") else request.headers.get("api-key", "")
    if not hmac.compare_digest(token.encode(), key.encode()):
        raise ApiError(401, "missing or wrong API key", "invalid_api_key")
