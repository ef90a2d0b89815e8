"""Errors before the first byte: an HTTP status and an RFC 9457 problem body."""

from __future__ import annotations

import math
from typing import Any

from starlette.responses import JSONResponse

__all__ = ["Problem", "problem"]

MEDIA_TYPE = "application/problem+json"


class Problem(Exception):
    """Raise anywhere before streaming starts; the app turns it into a response."""

    def __init__(self, status: int, title: str, detail: str = "", *, retry_after: float | None = None,
                 **extra: Any) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.retry_after = retry_after
        self.extra = extra

    def response(self) -> JSONResponse:
        return problem(self.status, self.title, self.detail, retry_after=self.retry_after, **self.extra)


def problem(status: int, title: str, detail: str = "", *, retry_after: float | None = None,
            **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return JSONResponse(body, status_code=status, headers=headers, media_type=MEDIA_TYPE)
