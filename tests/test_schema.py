"""schemathesis against the gateway's own OpenAPI schema, on a real server: no 5xx, no schema violation."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import positive_data_acceptance

from .support import gateway

KEY = "schema-key-0123456789"
IDLE_MS = 500
# Bounded: every streaming case ends within a few seconds (few tokens, a short idle timeout).
ENV = {
    "GATEWAY_API_KEYS": f"fuzz={KEY}",
    "GATEWAY_MAX_TOKENS_LIMIT": "8",
    "GATEWAY_IDLE_TIMEOUT_S": str(IDLE_MS / 1000),
    "GATEWAY_HEARTBEAT_S": "0.2",
    "GATEWAY_DETACH_GRACE_S": "0.5",
}


@pytest.fixture(scope="module")
def api_schema():
    with gateway(ENV) as gw:
        yield schemathesis.openapi.from_url(gw.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


def asked_to_fail(case) -> bool:
    """The body asks the simulated model to refuse (any status it names) or to fail (5xx from /v1/complete)."""
    sim = (case.body or {}).get("sim") if isinstance(case.body, dict) else None
    if not isinstance(sim, dict):
        return False
    if sim.get("pre_error") is not None:
        return True  # passed through as the model's status
    # /v1/complete answers 502 or 504 when the generation fails or goes silent past the idle timeout.
    slow = any(isinstance(sim.get(k), (int, float)) and sim[k] >= IDLE_MS / 2 for k in ("ttft_ms", "itl_ms", "stall_ms"))
    return case.path == "/v1/complete" and (slow or sim.get("fail_after") is not None)


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms(case):
    headers = {"Authorization": f"Bearer {KEY}"}
    if asked_to_fail(case):
        response = case.call_and_validate(headers=headers, timeout=20,
                                          excluded_checks=[not_a_server_error, positive_data_acceptance])
        assert response.headers["content-type"] == "application/problem+json"
        assert response.status_code >= 400
    else:
        case.call_and_validate(headers=headers, timeout=20)
