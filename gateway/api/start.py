"""Starting a stream for an LLM-format route: validate the body, create the stream, and turn every
refusal into that format's error response (OpenAI's `{"error": ...}`, Anthropic's `{"type": "error", ...}`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.responses import JSONResponse

from ..guard import KEY
from ..problems import Problem
from ..registry import UnknownModel
from ..sources.base import PreStreamError

if TYPE_CHECKING:
    from ..service import Context
    from ..transports import HttpDeps
    from ..models import StreamRequest
    from ..stream import Stream

__all__ = ["ErrorResponse", "open_stream", "context", "http_deps"]

B = TypeVar("B", bound=BaseModel)


class ErrorResponse(Protocol):
    def __call__(self, status: int, message: str, code: str | None = None, *, param: str | None = None,
                 retry_after: float | None = None) -> JSONResponse: ...


def context(request: Request) -> Context:
    return request.app.state.ctx


def http_deps(request: Request) -> HttpDeps:
    """What an `EventStream` takes (built once per app by create_app)."""
    return request.app.state.http


async def open_stream(request: Request, model: type[B], convert: Callable[[B], StreamRequest],
                      error: ErrorResponse, *, one_shot: Callable[[B], bool] = lambda _: True,
                      ) -> tuple[B, StreamRequest, Stream] | JSONResponse:
    """Validate and start; any refusal comes back as `error(...)`, the format's own error response."""
    ctx = context(request)
    try:
        body = model.model_validate_json(await request.body())
        stream_request = convert(body)
    except ValidationError as exc:
        errors = [(".".join(map(str, e["loc"])), e["msg"]) for e in exc.errors()]
        message = "; ".join(f"{loc}: {msg}" if loc else msg for loc, msg in errors)
        return error(400, message, "invalid_request", param=errors[0][0] or None)
    except ValueError as exc:  # a conversion the format allows but the gateway cannot serve
        return error(400, str(exc), "invalid_request")
    try:
        stream = await ctx.create(stream_request, one_shot(body), request.scope.get(KEY))
    except Problem as exc:
        # The LLM APIs answer every invalid request with 400.
        return error(400 if exc.status == 422 else exc.status, exc.detail or exc.title, exc.extra.get("code"),
                     retry_after=exc.retry_after)
    except PreStreamError as exc:
        return error(exc.status, exc.detail, exc.code, retry_after=exc.retry_after)
    except UnknownModel as exc:
        return error(404, f"The model {str(exc)!r} does not exist", "model_not_found", param="model")
    return body, stream_request, stream
