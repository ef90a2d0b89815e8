"""Who may come in, and how often: pure ASGI middleware, O(1) per request, nothing per event.

`Edge` is the app's outermost layer: it refuses connections over the process
limit (503 before accept) and runs a stream's deferred body once the layers
inside it have returned. `Guard` sits inside CORS: API key or attach token, the
WebSocket `Origin` allow-list, and the per-key request rate (429).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from .limits import Buckets
from .problems import Problem
from .render import response

if TYPE_CHECKING:
    from collections import Counter
    from collections.abc import Iterable

    from .auth import Auth
    from .clock import Clock

__all__ = ["Edge", "Guard", "cors", "defer", "KEY", "ATTACH", "DEFER", "ATTACH_KINDS"]

KEY = "gateway.key"  # scope entry: the caller's key id (None with auth off)
# scope entry on a connection let in by an attach token: (the one stream it may read, the token's expiry)
ATTACH = "gateway.attach"
DEFER = "gateway.defer"  # scope entry: what to run once every layer inside the edge has returned
ATTACH_KINDS = ("sse", "ndjson", "ws")
_EXEMPT = frozenset(("/healthz", "/metrics"))  # a full replica still answers its load balancer and monitoring


async def refuse(exc: Problem, scope: Scope, receive: Receive, send: Send) -> None:
    # On a WebSocket this is a denial response: the client sees the status and body before any accept.
    await response(exc)(scope, receive, send)


class Edge:
    """`max_connections` open at once (0: no limit); a refusal counts in `refused`."""

    def __init__(self, app: ASGIApp, max_connections: int, refused: Counter[str]) -> None:
        self.app = app
        self.limit = max_connections
        self.refused = refused
        self.open = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        if self.limit and self.open >= self.limit and scope["path"] not in _EXEMPT:
            self.refused["connections"] += 1
            return await refuse(Problem(503, "Too many connections", f"this process serves at most {self.limit}",
                                        retry_after=1, code="too_many_connections"), scope, receive, send)
        self.open += 1
        scope[DEFER] = None
        try:
            await self.app(scope, receive, send)
            run = scope.pop(DEFER, None)
            if run is not None:
                _shed(scope)
                await run(scope, receive, send)
        finally:
            self.open -= 1


# Entries the ASGI spec defines, and ours: the scope lives as long as the connection.
_KEEP = frozenset(("type", "asgi", "http_version", "server", "client", "scheme", "method", "root_path", "path",
                   "raw_path", "query_string", "headers", "subprotocols", "state", "extensions"))


def _shed(scope: Scope) -> None:
    """Drop what the router and FastAPI left in the scope (their exit stacks, the route, the app)."""
    kept = {n: v for n, v in scope.items() if n in _KEEP or n.startswith("gateway.")}
    if len(kept) < len(scope):
        # Rebuilt in place (the server and the transport hold this dict): a dict never shrinks its
        # table as entries go, and routing grew this one to twice the size of what stays (~0.4 KB).
        scope.clear()
        scope.update(kept)


def defer(scope: Scope, run: ASGIApp) -> bool:
    """Have the edge call `run(scope, receive, send)` after the app returns, with the edge's own `receive`
    and `send`; False when there is no edge (the caller runs it now, with its own).

    A stream lasts minutes; run inside the app, it would keep a coroutine frame
    and the request objects of every middleware and router layer alive all
    that time (about a third of a connection's memory). Run from the edge,
    those are freed once the handler has answered, and so are the wrappers the
    layers put around `receive` and `send` (none of them changes a body).
    """
    if DEFER not in scope or scope[DEFER] is not None:
        return False
    scope[DEFER] = run
    return True


class Guard:
    """What it checks comes in explicitly (create_app): the keys (`auth`), the per-key `rates` (None: off),
    the shared `clock`, the `refused` counter, and the settings values it reads once here."""

    def __init__(self, app: ASGIApp, *, auth: Auth, rates: Buckets | None, clock: Clock, refused: Counter[str],
                 allowed_origins: Iterable[str], metrics_public: bool, docs_public: bool,
                 unauthorized_per_s: float) -> None:
        self.app = app
        self.auth = auth
        self.rates = rates
        self.clock = clock
        self.refused = refused
        self.origins = set(allowed_origins)
        self.check_origin = bool(self.origins) and "*" not in self.origins
        # With keys on, these need a key too unless a setting opens them.
        self.closed = frozenset(([] if metrics_public else ["/metrics"])
                                + ([] if docs_public else ["/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"]))
        # Failed authentication, per client address: 401s past this rate become 429s.
        self.failures = Buckets(unauthorized_per_s) if unauthorized_per_s else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        path = scope.get("path", "")
        if kind == "lifespan" or not (path.startswith("/v1/") or (path in self.closed and self.auth.enabled)):
            return await self.app(scope, receive, send)
        try:
            if kind == "websocket" and self.check_origin:
                self._origin(scope)
            scope[KEY] = key = self._key(scope)
            rates = self.rates
            if rates is not None:
                wait = rates.take(key, self.clock.now())
                if wait:
                    self.refused["rate"] += 1
                    raise Problem(429, "Too many requests", f"over {rates.rate:g} requests per second for this key",
                                  retry_after=wait, code="rate_limited")
        except Problem as exc:
            return await refuse(exc, scope, receive, send)
        await self.app(scope, receive, send)

    def _origin(self, scope: Scope) -> None:
        for name, value in scope["headers"]:
            if name == b"origin":
                if value.decode("latin-1") not in self.origins:
                    self.refused["origin"] += 1
                    raise Problem(403, "Origin not allowed", "this origin may not open WebSockets here",
                                  code="origin_not_allowed")
                return

    def _key(self, scope: Scope) -> str | None:
        auth = self.auth
        if not auth.enabled:
            return None
        header = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value
                break
            if name == b"x-api-key" and scope["path"] == "/v1/messages":
                header = b"Bearer " + value  # how Anthropic's SDKs send the key

        try:
            if header is None:
                token = _token(scope)
                if token is not None:
                    stream_id = scope["path"].split("/")[3]
                    key_id, expires = auth.check_token(token, stream_id)
                    scope[ATTACH] = (stream_id, expires)  # this connection may read that stream only
                    return key_id
            return auth.key_id(header)
        except Problem as exc:
            self.refused["unauthorized"] += 1
            if self.failures is not None:  # guessing keys costs time: the same address is slowed down
                client = scope.get("client")
                address = client[0] if client else None
                if len(self.failures.buckets) > 10_000:
                    self.failures.buckets.clear()
                wait = self.failures.take(address, self.clock.now())
                if wait:
                    self.refused["unauthorized_rate"] += 1
                    raise Problem(429, "Too many failed attempts", "too many requests with a wrong or no key "
                                  "from this address", retry_after=wait, code="rate_limited") from None
            raise exc


def _token(scope: Scope) -> str | None:
    """`?token=` on an attach path only (GET .../{id}/sse|ndjson, WS .../{id}/ws)."""
    parts = scope["path"].split("/")
    if len(parts) != 5 or parts[2] != "streams" or parts[4] not in ATTACH_KINDS or not scope["query_string"]:
        return None
    values = parse_qs(scope["query_string"].decode("latin-1")).get("token")
    return values[0] if values else None


def cors(app: ASGIApp, origins: list[str]) -> ASGIApp:
    return CORSMiddleware(
        app, allow_origins=origins, allow_methods=["GET", "POST", "DELETE"],
        allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        expose_headers=["Location", "X-Stream-Id", "Retry-After"], max_age=600,
    )
