"""OpenAI-shaped errors: every failure answers `{"error": {"message", "type", "param", "code"}}`.

Handlers turn FastAPI's 422 validation errors into 400s (a client mistake is a 400 in the
OpenAI API, and clients branch on it); `APIError` carries the deliberate ones (401, 404, 429,
503, 504). Unexpected exceptions become `internal_error()` in the request middleware, which
knows the request id.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.responses import ErrorBody, ErrorResponse

# OpenAI's error types; any other 4xx is the client's and any 5xx the server's.
_TYPE_BY_STATUS = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}


def _error_type(status: int) -> str:
    return _TYPE_BY_STATUS.get(status, "invalid_request_error" if 400 <= status < 500 else "server_error")


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = _error_type(status)
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return ErrorResponse(error=ErrorBody(message=self.message, type=self.type, param=self.param,
                                             code=self.code)).model_dump()


def internal_error() -> APIError:
    """What a client sees of a server fault: no internals, just where to look."""
    return APIError(500, "internal error; the request id in x-request-id identifies it in the server log")


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _loc(loc: tuple[Any, ...]) -> str:
    # ("body", "messages", 0, "role") -> "messages[0].role"; the "body" prefix says nothing.
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(error: dict[str, Any]) -> str:
    kind, ctx = error.get("type"), error.get("ctx") or {}
    if kind == "json_invalid":
        return f"request body is not valid JSON ({ctx.get('error', 'decode error')})"
    if kind == "extra_forbidden":
        return f"{_loc(tuple(error.get('loc', ())))}: unsupported parameter"
    where = _loc(tuple(error.get("loc", ()))) or "request body"
    return f"{where}: {str(error.get('msg', 'invalid')).removeprefix('Value error, ')}"


def validation_error(exc: RequestValidationError) -> APIError:
    errors = list(exc.errors())
    first = errors[0] if errors else {}
    param = _loc(tuple(first.get("loc", ()))) if first.get("type") != "json_invalid" else ""
    return APIError(400, "; ".join(_describe(e) for e in errors) or "invalid request", param=param or None,
                    code=str(first["type"]) if first.get("type") else None)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(APIError(exc.status_code, str(exc.detail), headers=exc.headers))
