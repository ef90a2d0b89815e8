from __future__ import annotations

import pytest

from .support import gateway

# Short liveness settings so heartbeats, timeouts and grace show within a test.
FAST = {
    "GATEWAY_HEARTBEAT_S": "0.3",
    "GATEWAY_IDLE_TIMEOUT_S": "2.0",
    "GATEWAY_DETACH_GRACE_S": "1.0",
    "GATEWAY_TTL_S": "1.5",
    "GATEWAY_MAX_PROMPT_BYTES": "1000",
    "GATEWAY_MAX_TOKENS_LIMIT": "5000",
    "GATEWAY_WS_MAX_MESSAGE_BYTES": "4096",
}


@pytest.fixture(scope="module")
def gw():
    """One real gateway (uvicorn on a free loopback port) per test module."""
    with gateway(FAST) as g:
        yield g
