"""RFC 9457 problem details for every error the API returns.

One exception type (:class:`ApiError`) for errors raised by routes, and handlers that turn
FastAPI's own validation errors and HTTP exceptions into the same shape. Every problem
names the field at fault in ``errors[]`` (``field`` dotted, ``pointer`` as JSON Pointer)
and repeats the first one as ``code``/``param`` for clients that read just one error.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Iterator, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"


class ApiError(Exception):
    def __init__(self, status: int, detail: str, *, code: str | None = None, param: str | None = None,
                 errors: Sequence[dict[str, Any]] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code or HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
        self.param = param
        self.errors = list(errors) if errors is not None else (
            [field_error(param, detail, self.code)] if param else []
        )
        self.headers = headers or {}


def not_found(kind: str, object_id: str, param: str | None = None) -> ApiError:
    """404 for objects that do not exist *or* belong to another project (never 403)."""
    return ApiError(404, f"no {kind} with id {object_id!r}", code=f"{kind}_not_found", param=param)


def field_error(field: str, message: str, code: str = "invalid", location: str = "body") -> dict[str, Any]:
    pointer = "#/" + "/".join(field.split(".")) if location == "body" else None
    return {"field": field, "in": location, "pointer": pointer, "message": message, "code": code}


def problem(request: Request, status: int, detail: str, code: str, errors: list[dict[str, Any]],
            headers: dict[str, str] | None = None) -> JSONResponse:
    first = errors[0] if errors else {}
    body = {
        "type": f"urn:bise:problem:{code}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        "code": code,
        "param": first.get("field"),
        "errors": errors,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _validation_field(loc: Sequence[Any]) -> tuple[str, str]:
    location = str(loc[0]) if loc else "body"
    parts = [str(p) for p in loc[1:]]
    return ".".join(parts) or location, location


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return problem(request, exc.status, exc.detail, exc.code, exc.errors, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for err in exc.errors():
        field, location = _validation_field(err.get("loc", ()))
        errors.append(field_error(field, str(err.get("msg", "invalid value")), str(err.get("type", "invalid")), location))
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or "invalid request"
    return problem(request, 422, detail, "invalid_request", errors)


def _leaf_routes(routes: Sequence[Any]) -> Iterator[Any]:
    """Every endpoint route, looking inside included routers (FastAPI nests them)."""
    for route in routes:
        inner = getattr(route, "original_router", None) or getattr(route, "router", None)
        if inner is not None and hasattr(inner, "routes") and not hasattr(route, "path_regex"):
            yield from _leaf_routes(inner.routes)
        elif hasattr(route, "path_regex"):
            yield route


def _allowed_methods(request: Request) -> str:
    """Every method any route serves at this path (Starlette names only the first route's)."""
    path = request.scope.get("path", "")
    methods: set[str] = set()
    for route in _leaf_routes(request.app.routes):
        if route.path_regex.match(path) and getattr(route, "methods", None):
            methods |= set(route.methods)
    return ", ".join(sorted(methods))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    return problem(request, exc.status_code, str(exc.detail), code, [], headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    import logging

    logging.getLogger("api").exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(request, 500, "internal error; it has been logged", "internal_error", [])


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": HTTPStatus(code).phrase, "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
    for code in (400, 401, 404, 409, 413, 422, 429)
}
