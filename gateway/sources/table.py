"""The sources a deployment configures (`GATEWAY_MODELS`), built by kind."""

from __future__ import annotations

from ..settings import ModelSpec
from .ollama import OllamaRelay
from .openai import OpenAIRelay
from .relay import Relay
from .responses import ResponsesRelay

__all__ = ["KINDS", "build_sources"]

KINDS: dict[str, type[Relay]] = {"openai": OpenAIRelay, "ollama": OllamaRelay, "responses": ResponsesRelay}


def build_sources(models: dict[str, ModelSpec], read_timeout_s: float) -> dict[str, Relay]:
    return {name: KINDS[spec.kind](name, spec, read_timeout_s) for name, spec in models.items()}
