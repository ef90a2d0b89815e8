"""Request bodies of the public API (validated once, before streaming)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SimParams", "StreamRequest"]


class SimParams(BaseModel):
    """Timing and fault injection for the simulated model; unset fields take the settings' defaults."""

    model_config = ConfigDict(extra="forbid")

    ttft_ms: float | None = Field(None, ge=0, le=600_000, description="delay before the first token")
    itl_ms: float | None = Field(None, ge=0, le=60_000, description="mean gap between tokens")
    jitter: float | None = Field(None, ge=0, le=1, description="relative spread of the gaps")
    fail_after: int | None = Field(None, ge=0, description="N tokens, then an in-band error")
    drop_after: int | None = Field(None, ge=0, description="N tokens, then the connection is cut")
    stall_after: int | None = Field(None, ge=0, description="N tokens, then a pause of stall_ms")
    stall_ms: float = Field(0, ge=0, le=3_600_000)
    pre_error: int | None = Field(None, ge=400, le=599, description="refuse with this HTTP status")


class StreamRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = ""
    max_tokens: int = Field(256, ge=1, le=1_000_000)
    seed: int = Field(0, ge=0, le=2**63 - 1)
    model: str | None = Field(None, max_length=200)
    sim: SimParams = Field(default_factory=SimParams)
