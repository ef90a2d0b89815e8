"""One name per transport: how a client gets a stream's events, named once, here.

The page (its panels and clients), the Locust users, the comparison report,
the Python client, the benchmarks, the `transport` metric label and the docs
all use these names. A codec (`sse`, `ndjson`, `ws`: `gateway/codecs`, the
URL's last segment) is a *format*; two transports share the SSE format:

    sse_get    EventSource: POST /v1/streams, then GET /v1/streams/{id}/sse
    sse_post   fetch + SSE: POST /v1/sse
    ndjson     fetch + NDJSON: POST /v1/ndjson
    ws         WebSocket: /v1/ws
    responses  OpenAI's Responses API: POST /v1/responses (streamed, background)
    chat       OpenAI's Chat Completions: POST /v1/chat/completions (streamed)
    messages   Anthropic's Messages API: POST /v1/messages (streamed)
    complete   one JSON answer, not streamed: POST /v1/complete (the baseline)

The server labels each connection by the request it came in on: every resume
by GET /v1/streams/{id}/sse counts as `sse_get`, whichever client sent it.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Transport", "LABELS", "ROUTES", "COLORS", "FORMAT", "OWN", "PAGE", "STREAMED", "RESUMABLE", "FALLBACK",
           "ALIASES", "parse", "counted_as"]


class Transport(StrEnum):
    SSE_GET = "sse_get"
    SSE_POST = "sse_post"
    NDJSON = "ndjson"
    WS = "ws"
    RESPONSES = "responses"
    CHAT = "chat"
    MESSAGES = "messages"
    COMPLETE = "complete"


T = Transport

# What a person reads: the page's panel headings and the report's column names.
LABELS: dict[Transport, str] = {
    T.SSE_GET: "EventSource", T.SSE_POST: "fetch + SSE", T.NDJSON: "fetch + NDJSON", T.WS: "WebSocket",
    T.RESPONSES: "Responses API", T.CHAT: "Chat Completions", T.MESSAGES: "Messages API",
    T.COMPLETE: "not streamed",
}
ROUTES: dict[Transport, str] = {
    T.SSE_GET: "POST /v1/streams, GET …/sse", T.SSE_POST: "POST /v1/sse", T.NDJSON: "POST /v1/ndjson",
    T.WS: "WS /v1/ws", T.RESPONSES: "POST /v1/responses", T.CHAT: "POST /v1/chat/completions",
    T.MESSAGES: "POST /v1/messages", T.COMPLETE: "POST /v1/complete",
}
# Each transport's colour in charts (the Locust chart, the comparison report).
COLORS: dict[Transport, str] = {
    T.SSE_GET: "#7c3aed", T.SSE_POST: "#2563eb", T.NDJSON: "#059669", T.WS: "#ea580c", T.RESPONSES: "#db2777",
    T.CHAT: "#0891b2", T.MESSAGES: "#ca8a04", T.COMPLETE: "#6b7280",
}
# The format on the wire: the gateway's own codecs (`sse`, `ndjson`, `ws`) or an LLM API's.
FORMAT: dict[Transport, str] = {
    T.SSE_GET: "sse", T.SSE_POST: "sse", T.NDJSON: "ndjson", T.WS: "ws", T.RESPONSES: "responses",
    T.CHAT: "chat", T.MESSAGES: "messages", T.COMPLETE: "json",
}

OWN = (T.SSE_GET, T.SSE_POST, T.NDJSON, T.WS)  # the gateway's own event wire (docs/wire-contract.md)
PAGE = (*OWN, T.RESPONSES)  # the page's panels, in order
STREAMED = (*OWN, T.RESPONSES, T.CHAT, T.MESSAGES)  # the `transport` metric label's values
RESUMABLE = (*OWN, T.RESPONSES)  # a client that left may come back (chat and messages cannot)
FALLBACK = (T.WS, T.SSE_POST, T.NDJSON)  # where a path refuses or kills one, the next (gateway/fallback.py)

# Earlier names still accepted where a user typed them (the Python client's and the benchmarks' "sse",
# a POST /v1/sse); never printed.
ALIASES: dict[str, Transport] = {"sse": T.SSE_POST}


def counted_as(name: str) -> tuple[str, ...]:
    """The metric labels one client's connections are counted under: a fetch + SSE client resumes by
    GET /v1/streams/{id}/sse, counted as sse_get."""
    t = parse(name)
    return (t.value, T.SSE_GET.value) if t is T.SSE_POST else (t.value,)


def parse(name: str) -> Transport:
    """The transport a name (or an alias) stands for; ValueError naming the choices otherwise."""
    try:
        return ALIASES.get(name) or Transport(name)
    except ValueError:
        raise ValueError(f"unknown transport {name!r}: one of {', '.join(Transport)}") from None
