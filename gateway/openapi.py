"""What the OpenAPI schema says each route answers: bodies, streaming media types, problems.

Routes take `responses=...` from here; `install` moves every error response to
`application/problem+json`, which is what the gateway sends (RFC 9457).
schemathesis checks the running server against this (tests/test_schema.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict
from starlette.routing import Match
from starlette.types import Scope

from .settings import Settings

__all__ = ["install", "allowed", "SEQ", "CREATE", "STATUS", "CANCEL", "ATTACH", "ONE_SHOT", "COMPLETE", "OPEN",
           "METRICS", "CHAT", "MODEL", "RESPONSES", "RESPONSE", "RESPONSE_CANCEL", "MESSAGES"]

# A resume point: what parses (anything else is a 400, documented too).
SEQ = {"pattern": "^(-1|[0-9]{1,18})$"}


class Problem(BaseModel):
    """An error before the first byte (RFC 9457); `code` is the gateway's own, stable name for it."""

    model_config = ConfigDict(extra="allow")
    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    code: str | None = None


class OpenAIErrorBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """The OpenAI-compatible routes answer errors as OpenAI does (application/json)."""

    error: OpenAIErrorBody


class AnthropicErrorBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    message: str


class AnthropicError(BaseModel):
    """`POST /v1/messages` answers errors as Anthropic does (application/json)."""

    type: str
    error: AnthropicErrorBody


class Links(BaseModel):
    id: str
    sse: str
    ndjson: str
    ws: str
    token: str | None = None  # with API keys: an attach token, already in the three URLs


class StreamStatus(Links):
    model: str
    status: str
    created: float
    tokens: int
    last_seq: int
    clients: int
    finish_reason: str | None
    error: str | None


class Completion(BaseModel):
    id: str
    model: str
    text: str
    tokens: int
    finish_reason: str | None
    sha256: str


_WHY = {
    400: "Malformed resume point",
    401: "No or unknown API key, or a bad attach token",
    404: "No such stream (or another key's) or model",
    409: "Resume point past the end, or nothing to cancel",
    410: "The stream ended and its events expired",
    413: "Body or prompt too large",
    422: "Invalid request body",
    429: "Rate, stream or client limit (Retry-After), or the model refused",
    502: "The generation failed",
    503: "Too many connections (Retry-After), or the model is unavailable",
    504: "The model went silent",
    "4XX": "The simulated model refused with this status (sim.pre_error)",
    "5XX": "The simulated model refused with this status (sim.pre_error)",
}


def _problems(*statuses: int | str) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": Problem, "description": _WHY[s]} for s in (*statuses, 401, 429, 503)}


def _text(media: str, description: str, schema: dict | None = None) -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": schema or {"type": "string"}}}}


_MEDIA = {"sse": "text/event-stream", "ndjson": "application/x-ndjson"}
_EVENT = {"type": "object", "properties": {"type": {"enum": ["meta", "token", "heartbeat", "error", "done"]}}}


_CREATE = (404, 413, 422, "4XX", "5XX")
CREATE: dict = {201: {"model": Links, "description": "Created; generation has started"}, **_problems(*_CREATE)}
STATUS: dict = {200: {"model": StreamStatus, "description": "The stream's state"}, **_problems(404, 410, 422)}
CANCEL: dict = {204: {"description": "Cancelled"}, **_problems(404, 409, 410, 422)}
# SSE: each event's data is one event object (wire contract); NDJSON: the body, line after line.
ATTACH = {f: {200: _text(m, "The stream's events", _EVENT if f == "sse" else None),
              **_problems(400, 404, 409, 410, 422)} for f, m in _MEDIA.items()}
ONE_SHOT = {f: {200: _text(m, "The new stream's events", _EVENT if f == "sse" else None),
                **_problems(*_CREATE)} for f, m in _MEDIA.items()}
COMPLETE: dict = {200: {"model": Completion, "description": "The whole text"}, **_problems(*_CREATE, 502, 504)}
OPEN: dict = {503: {"model": Problem, "description": _WHY[503]}}
METRICS: dict = {200: _text("text/plain", "Prometheus text format"), **OPEN,
                 422: {"model": Problem, "description": _WHY[422]}}  # `?worker=` other than self or all


def _openai(*statuses: int | str) -> dict[int | str, dict[str, Any]]:
    """OpenAI error bodies; 401, 429 and 503 may also come from the gateway's guard as problems."""
    out: dict[int | str, dict[str, Any]] = {s: {"model": OpenAIError, "description": _WHY[s]}
                                            for s in (*statuses, 401, 429, 503)}
    for response in out.values():  # the router (no such path) answers problems too
        response["content"] = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    return out


CHAT: dict = {200: {"description": "A chat.completion, or chat.completion.chunk events with stream: true",
                    "content": {"text/event-stream": {"schema": {}}}},  # chunks, then the string [DONE]
              **_openai(400, 404, 413, 502, 504, "4XX", "5XX")}
MODEL: dict = _openai(404)
_RESPONSE = {"description": "A response object (OpenAI Responses API)", "content": {"application/json": {"schema": {
    "type": "object", "required": ["id", "object", "status", "output"],
    "properties": {"object": {"const": "response"}, "status": {"type": "string"}, "output": {"type": "array"}}}}}}
RESPONSES: dict = {200: {**_RESPONSE, "description": "The response, or its Responses events with stream: true",
                         "content": {**_RESPONSE["content"], "text/event-stream": {"schema": {}}}},
                   **_openai(400, 404, 413, 502, 504, "4XX", "5XX")}
RESPONSE: dict = {200: {**_RESPONSE, "description": "The response so far, or its events after starting_after",
                        "content": {**_RESPONSE["content"], "text/event-stream": {"schema": {}}}},
                  **_openai(400, 404, 409, 410, 422)}
RESPONSE_CANCEL: dict = {200: _RESPONSE, **_openai(404, 410)}
MESSAGES: dict = {200: {"description": "A message, or Messages events (text/event-stream) with stream: true",
                        "content": {"text/event-stream": {"schema": {}}}},
                  **{s: {"model": AnthropicError, "description": _WHY[s]}
                     for s in (400, 404, 413, 502, 504, "4XX", "5XX", 401, 429, 503)}}
for _response in MESSAGES.values():  # the guard and the router answer problems
    if "model" in _response:
        _response["content"] = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


Bodies = list[tuple[str, type[BaseModel], tuple[str, ...]]]


def install(app: FastAPI, settings: Settings, bodies: Bodies) -> None:
    """Error responses are `application/problem+json`; request limits are this server's settings.

    `bodies` are the routes that parse their own bodies (to answer errors in their API's shape):
    (path, body model, fields capped at max_tokens_limit)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            components = schema["components"]["schemas"]
            for path, model, limited in bodies:
                operation = schema["paths"].get(path, {}).get("post")
                if operation is None:
                    continue
                # The route parses its own body (to answer errors in its API's shape).
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                for name in limited:
                    field = body["properties"][name]
                    (field["anyOf"][0] if "anyOf" in field else field)["maximum"] = settings.max_tokens_limit
                components[model.__name__] = body
                operation["requestBody"] = {"required": True, "content": {"application/json": {
                    "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}
            # prompt or messages, not both (a model validator says so; the schema says it too)
            components["StreamRequest"]["not"] = {
                "required": ["prompt", "messages"],
                "properties": {"prompt": {"minLength": 1}, "messages": {"type": "array"}}}
            fields = components["StreamRequest"]["properties"]
            fields["max_tokens"]["maximum"] = settings.max_tokens_limit
            fields["max_tokens"]["default"] = min(fields["max_tokens"]["default"], settings.max_tokens_limit)
            # The limit is in UTF-8 bytes; this many characters always fit.
            fields["prompt"]["maxLength"] = settings.max_prompt_bytes // 4
            for operations in schema["paths"].values():
                for operation in operations.values():
                    for param in operation.get("parameters", []):
                        # An optional parameter is absent, never null (a header cannot be null).
                        options = param["schema"].get("anyOf", [])
                        if len(options) == 2 and {"type": "null"} in options:
                            param["schema"] = {**param["schema"], **options[0]}
                            del param["schema"]["anyOf"]
            for operations in schema["paths"].values():
                for operation in operations.values():
                    for status, response in operation["responses"].items():
                        content = response.get("content", {})
                        ref = content.get("application/json", {}).get("schema", {}).get("$ref", "")
                        if status[0] in "45" and ref.endswith("/Problem"):
                            response["content"] = {"application/problem+json": content.pop("application/json")}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


def allowed(app: FastAPI, scope: Scope) -> str:
    """Every method some route serves at this path (for a 405's Allow header)."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches({**scope, "method": "GET"})
        if match is not Match.NONE and getattr(route, "methods", None):
            methods |= route.methods
    return ", ".join(sorted(methods))
