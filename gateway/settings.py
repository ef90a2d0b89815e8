"""All settings in one object, read from environment variables (prefix GATEWAY_)."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "ModelSpec", "get_settings"]


class ModelSpec(BaseModel):
    """A model served by relaying an upstream (see gateway/sources/relay.py)."""

    # openai: chat completions; responses: OpenAI's Responses API (relayed with resume); ollama: /api/chat
    kind: Literal["openai", "ollama", "responses"]
    base_url: str  # OpenAI-compatible and Responses: up to and with /v1; Ollama: the server root
    api_key: str | None = None
    upstream_model: str | None = None  # the name the upstream knows it by; default the gateway's name
    connect_timeout_s: float = Field(10.0, gt=0)
    # OpenAI's reasoning models refuse `max_tokens` and want `max_completion_tokens`.
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    # `serve --workers` (gateway/workers.py): processes on the one port; 0: one per core with the
    # Redis store, 1 with the memory store (whose streams one process cannot share).
    workers: int = Field(0, ge=0, le=1024)
    # Set by the supervisor in each worker: its index, and every worker's private loopback port.
    worker: int | None = None
    worker_ports: list[int] = []

    # Liveness: heartbeats on idle connections, an inactivity timeout on the
    # source, and never a limit on total duration.
    heartbeat_s: float = Field(15.0, gt=0)
    idle_timeout_s: float = Field(60.0, gt=0)
    # A lost connection is not a cancel: a stream whose last client left keeps generating this
    # long, so any client can resume it (one-shots too). `cancel`: a one-shot's generation stops
    # when its connection goes (what MCP's 2026 transport does). Chat and /v1/complete cannot be
    # resumed: their generation always stops with the connection. An explicit cancel (DELETE,
    # POST .../cancel, WebSocket `cancel`) stops any stream at once.
    disconnect: Literal["detach", "cancel"] = "detach"
    detach_grace_s: float = Field(10.0, ge=0)
    # An ended stream stays readable (for resume) this long.
    ttl_s: float = Field(300.0, gt=0)
    sse_retry_ms: int = Field(1000, ge=0)
    # Each connection's `retry` (and reconnect hint) adds up to this fraction of it at random: the
    # clients of a replica that drains or dies then come back spread out (docs/scale.md).
    sse_retry_jitter: float = Field(0.0, ge=0, le=10)
    # Switch off only to show what proxies do without it (the proxy lab).
    x_accel_buffering: bool = True

    max_body_bytes: int = Field(1_048_576, gt=0)
    max_prompt_bytes: int = Field(32_768, gt=0)
    max_tokens_limit: int = Field(8192, gt=0)
    ws_max_message_bytes: int = Field(65_536, gt=0)
    ws_per_message_deflate: bool = False

    model: str = "sim"
    # Relayed models by name, as JSON: {"name": {"kind": "openai", "base_url": ..., ...}}.
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    # Simulated model defaults, overridable per request in `sim`.
    sim_ttft_ms: float = Field(300.0, ge=0)
    sim_itl_ms: float = Field(25.0, ge=0)
    sim_jitter: float = Field(0.3, ge=0, le=1)

    # redis-cluster: REDIS_URL names any node of a Redis (or Valkey) Cluster (gateway/store/cluster.py).
    stream_store: Literal["memory", "redis", "redis-cluster"] = Field(
        "memory", validation_alias=AliasChoices("GATEWAY_STREAM_STORE", "STREAM_STORE")
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", validation_alias=AliasChoices("GATEWAY_REDIS_URL", "REDIS_URL")
    )

    # Redis store: connections per replica are this pool plus one reader and one pub/sub
    # connection, whatever the number of clients and streams (README "Several replicas").
    redis_pool_size: int = Field(8, ge=2, le=1024)
    # Redis Cluster: streams spread over this many hash tags, one reader each; set it to the number
    # of primaries (the tags fall one per primary with redis-cli's even slot layout).
    redis_shards: int = Field(3, ge=1, le=256)
    # The mirrors' reader waits this long after an XREAD that brought events before the next one, so
    # that each XREAD (whose cost grows with the streams mirrored) brings a window's worth of events:
    # mirrored events come up to this much later (0: read again at once; docs/scale.md "Reconnect storm").
    redis_read_window_ms: float = Field(10.0, ge=0, le=1000)
    # In-flight streams ride out a Redis outage this long, then end with `store_unavailable`.
    redis_outage_s: float = Field(5.0, gt=0)
    # On SIGTERM: keep generating in-flight streams this long, then end them with `shutdown`.
    drain_timeout_s: float = Field(30.0, ge=0)

    log_level: str = "info"
    log_prompts: bool = False
    log_file: str | None = None  # lifecycle JSON lines (gateway/journal.py); stderr when unset

    # Hardening (gateway/auth.py, gateway/guard.py). Auth is off while no key is set.
    # Keys: "name=secret" or a bare secret (its id is then a hash prefix), comma-separated
    # here, one a line in the file.
    api_keys: str = Field("", repr=False)
    api_keys_file: str | None = None
    # Signs attach tokens; generated at start when empty (tokens then die with the process).
    token_secret: str = Field("", repr=False)
    attach_token_ttl_s: float = Field(300.0, gt=0)
    # Browser origins allowed for CORS and for WebSocket upgrades; empty: no CORS, any Origin.
    allowed_origins: list[str] = []
    # Limits; 0 switches one off.
    rate_per_key: float = Field(0.0, ge=0)  # requests per second, with a burst of twice that
    # Requests with a wrong or no key, per client address and second (burst twice that); over it, 429.
    unauthorized_per_s: float = Field(5.0, ge=0)
    # With keys on, /metrics and the API docs (/docs, /redoc, /openapi.json) need a key unless opened here.
    metrics_public: bool = False
    docs_public: bool = False
    streams_per_key: int = Field(0, ge=0)  # streams generating at once
    max_connections: int = Field(10_000, ge=0)  # requests and WebSockets in flight per process
    # Admission (gateway/admission.py): past capacity a new stream gets 503 + Retry-After at once.
    # Streams generating per process, and how late (ms) the event loop may run; 0 switches one off.
    max_streams: int = Field(0, ge=0)
    admit_lag_ms: float = Field(0.0, ge=0)
    # The listen backlog (uvicorn's `backlog`, the kernel caps it at net.core.somaxconn): connections
    # the kernel holds before the server accepts them; past it a SYN is dropped and retried after 1 s.
    backlog: int = Field(4096, ge=1)
    # Connections uvicorn's listening socket accepts per wake-up (gateway/accept.py); 0: uvloop's own
    # accept, one connection per event-loop iteration (libuv's), with no admission at accept.
    accept_burst: int = Field(64, ge=0)
    # The connection gate (gateway/gate.py), in front of the HTTP parser: a request head must come
    # whole within `header_timeout_s` (else 408) and within `max_header_bytes` (else 431); at most
    # `max_pending_connections` connections may be sending heads (the oldest is closed for a new one),
    # and connections are counted from accept: over max_connections + max_pending_connections, 503.
    header_timeout_s: float = Field(10.0, ge=0)
    max_header_bytes: int = Field(32_768, ge=1024)
    max_pending_connections: int = Field(1_000, ge=1)
    # Memory for streams' events (gateway/registry.py): what this process keeps, all keys and per key.
    # A new stream is admitted against what it may still add (max_tokens x ~64 bytes); over the bound
    # the oldest ended streams nobody reads are dropped first (a later resume gets 410), then new
    # streams are refused (503 over_capacity, or 429 for a key over its share). 0 switches one off.
    max_kept_bytes: int = Field(512 * 1_048_576, ge=0)
    max_kept_bytes_per_key: int = Field(128 * 1_048_576, ge=0)
    # uvicorn closes a keep-alive connection idle this long between requests.
    keep_alive_s: float = Field(5.0, gt=0)
    clients_per_stream: int = Field(1_000, ge=0)
    ws_messages_per_s: float = Field(20.0, ge=0)  # control messages per WebSocket, burst twice that
    # Slow consumers: a connection whose write has been blocked this long, or while the stream
    # added this many bytes of events, is cut (the stream stays resumable).
    send_timeout_s: float = Field(30.0, gt=0)
    # One write holds at most about this much (NDJSON bytes): what a stalled connection pins.
    max_batch_bytes: int = Field(65_536, gt=0)
    max_lag_bytes: int = Field(4 * 1_048_576, gt=0)
    # 0: each event is written as it comes. Above 0, each connection writes at most once per
    # window, all that came due in it: fewer writes (CPU) for up to this much added latency.
    write_window_ms: float = Field(0.0, ge=0, le=1000)
    # Memory (gateway/memory.py): buffers this large or larger are mmapped, so they go back to the
    # system when freed (0: glibc's adaptive bound, which let the heap grow in the soak); every
    # `reclaim_s` the sweep runs a full GC and malloc_trim (0: never).
    malloc_mmap_threshold: int = Field(131_072, ge=0)
    reclaim_s: float = Field(60.0, ge=0)

    @property
    def sweep_s(self) -> float:
        """How often the shared clock checks heartbeats, idle timeouts, grace and TTL."""
        finest = min(self.heartbeat_s, self.idle_timeout_s, self.detach_grace_s or 1.0)
        return min(1.0, max(0.02, finest / 4))


@lru_cache
def get_settings() -> Settings:
    return Settings()
