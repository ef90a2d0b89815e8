"""A `Problem` as an HTTP response: the one place the web layer turns errors into problem+json."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from .problems import MEDIA_TYPE, Problem

__all__ = ["problem", "response"]


def response(exc: Problem) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.response_headers(), media_type=MEDIA_TYPE)


def problem(status: int, title: str, detail: str = "", *, retry_after: float | None = None,
            **extra: Any) -> JSONResponse:
    return response(Problem(status, title, detail, retry_after=retry_after, **extra))
