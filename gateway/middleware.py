"""Pure ASGI middleware (never BaseHTTPMiddleware: it buffers streams)."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .render import problem

__all__ = ["BodyLimit"]


class _TooLarge(HTTPException):
    """An HTTPException, so FastAPI's body parsing lets it through rather than calling it a 400."""

    def __init__(self) -> None:
        super().__init__(413, "Request body too large")


class BodyLimit:
    """413 for request bodies over `max_bytes`, by Content-Length or as they arrive."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                return await self._refuse(scope, receive, send)
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge()
            return message

        await self.app(scope, limited, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(413, "Request body too large", f"the body is over {self.max_bytes} bytes")
        await response(scope, receive, send)
