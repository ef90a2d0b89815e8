"""Errors before the first byte, from any layer, as problem+json responses (`gateway/render.py`)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from .. import openapi
from ..problems import Problem
from ..registry import UnknownModel
from ..render import problem, response
from ..sources.base import PreStreamError

__all__ = ["install"]


def install(app: FastAPI) -> None:
    app.add_exception_handler(Problem, _problem)
    app.add_exception_handler(PreStreamError, _refused)
    app.add_exception_handler(UnknownModel, _unknown_model)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _http)


async def _problem(request: Request, exc: Problem) -> JSONResponse:
    return response(exc)


async def _refused(request: Request, exc: PreStreamError) -> JSONResponse:
    return problem(exc.status, "Model refused the request", exc.detail, retry_after=exc.retry_after, code=exc.code)


async def _unknown_model(request: Request, exc: UnknownModel) -> JSONResponse:
    return problem(404, "Model not found", f"unknown model {exc}", code="model_not_found")


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return problem(422, "Invalid request", "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                                     for e in errors), errors=errors)


async def _http(request: Request, exc: HTTPException) -> JSONResponse:
    out = problem(exc.status_code, str(exc.detail))
    out.headers.update(exc.headers or {})
    if exc.status_code == 405:  # Starlette names the first route's methods only
        out.headers["Allow"] = openapi.allowed(request.app, request.scope)
    return out
