"""One JSON shape for every error: ``{"error": {"status", "code", "message", "param"}}``.

Bad input is 422 and names the parameter; an unknown path or resource 404; a missing, expired or
revoked key 401; PostgreSQL unavailable 503. Nothing ever answers with a stack trace: an
unexpected exception is logged and answers a 500 with a one-line message.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from metricsmith.api.serialization import JSONResponse
from metricsmith.custom_metrics.errors import AccessDenied, MetricNotFound
from metricsmith.errors import ServiceUnavailable, UserFacingError, one_line
from metricsmith.grains import GrainError
from metricsmith.query import NotAvailable

log = logging.getLogger("metricsmith.api")


class ApiError(Exception):
    """An error answered as JSON with ``status``; ``param`` names the offending parameter."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers


class BadParameter(ApiError):
    """422: a query or path parameter that cannot be used as given."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(422, "invalid_parameter", message, param)


class NotFound(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(404, "not_found", message)


class Unauthorized(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def body(status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"status": status, "code": code, "message": message, "param": param}}


def error_response(status: int, code: str, message: str, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body(status, code, message, param), status_code=status, headers=headers)


def _validation_param(error: dict[str, Any]) -> str | None:
    loc = [str(p) for p in error.get("loc", ()) if p not in ("query", "path", "header", "body")]
    return ".".join(loc) or None


async def _on_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.param, exc.headers)


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    first = errors[0] if errors else {}
    param = _validation_param(first)
    message = f"{param}: {first.get('msg', 'invalid value')}" if param else str(first.get("msg", "invalid request"))
    return error_response(422, "invalid_parameter", one_line(message), param)


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message = str(exc.detail) if exc.detail else code
    if exc.status_code == 404 and message == "Not Found":
        message = f"no such path {request.url.path}; the API is described at /docs and /openapi.json"
    return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))


async def _on_user_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, MetricNotFound | AccessDenied):  # no existence leak: 404 either way
        return error_response(404, "not_found", one_line(str(exc)))
    if isinstance(exc, NotAvailable | ServiceUnavailable):
        return error_response(503, "not_available", one_line(str(exc)))
    return error_response(422, "invalid_parameter", one_line(str(exc)))


async def _on_unavailable(request: Request, exc: Exception) -> JSONResponse:
    which = "Redis" if isinstance(exc, redis.RedisError) else "PostgreSQL"
    log.warning("%s unavailable during %s: %s", which, request.url.path, exc)
    return error_response(503, "unavailable", f"{which} unavailable; retry when it is back")


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error during %s", request.url.path)
    return error_response(500, "internal_error", f"internal error ({type(exc).__name__}); see the server log")


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(GrainError, _on_user_error)
    app.add_exception_handler(UserFacingError, _on_user_error)
    app.add_exception_handler(psycopg.OperationalError, _on_unavailable)
    app.add_exception_handler(redis.ConnectionError, _on_unavailable)
    app.add_exception_handler(redis.TimeoutError, _on_unavailable)
    app.add_exception_handler(Exception, _on_unexpected)


class ErrorDetail(BaseModel):
    status: int
    code: str
    message: str
    param: str | None = None


class ErrorBody(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail


#: the error answers every route may give (documented in the OpenAPI schema)
RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing, unknown, expired or revoked API key"},
    404: {"model": ErrorBody, "description": "no such path or resource (or not visible to the key's user)"},
    422: {"model": ErrorBody, "description": "a parameter that cannot be used as given (the body names it)"},
    503: {"model": ErrorBody, "description": "PostgreSQL (or, for realtime, Redis) unavailable"},
    500: {"model": ErrorBody, "description": "unexpected error (never with a stack trace)"},
}
