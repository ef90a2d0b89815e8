"""Errors before the first byte: an HTTP status and an RFC 9457 problem body, with no web framework.

Raise a `Problem` anywhere below the web layer (registry, store, service); the web layer renders
it (`gateway/render.py`) as an `application/problem+json` response, or a WebSocket denial.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["Problem", "MEDIA_TYPE"]

MEDIA_TYPE = "application/problem+json"


class Problem(Exception):
    """Raise anywhere before streaming starts; the app turns it into a response."""

    def __init__(self, status: int, title: str, detail: str = "", *, retry_after: float | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.retry_after = retry_after
        self.headers = headers or {}  # more response headers (a 401's WWW-Authenticate)
        self.extra = extra

    def body(self) -> dict[str, Any]:
        body = {"type": "about:blank", "title": self.title, "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        body.update(self.extra)
        return body

    def response_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return headers
