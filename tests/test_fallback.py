"""gateway/fallback.py without sockets: when a client moves down WebSocket -> SSE -> NDJSON."""

from gateway.fallback import ORDER, Fallback


def test_auto_is_websocket_then_sse_then_ndjson():
    assert ORDER == ("ws", "sse_post", "ndjson")
    policy = Fallback.of("auto")
    assert policy.transport == "ws"
    assert policy.refused() and policy.transport == "sse_post"
    assert policy.refused() and policy.transport == "ndjson"
    assert not policy.refused() and policy.transport == "ndjson"  # nothing left: the caller raises
    assert policy.switches == [("ws", "sse_post"), ("sse_post", "ndjson")]


def test_one_transport_never_falls_back():
    policy = Fallback.of("ws")
    assert not policy.refused()
    assert not policy.ended(False) and not policy.ended(False) and policy.transport == "ws"


def test_barren_connections_in_a_row_move_on_and_progress_resets_the_count():
    policy = Fallback.of(("ws", "sse_post"))
    assert not policy.ended(False)  # one drop can be bad luck
    assert not policy.ended(True)  # tokens came: the transport works
    assert not policy.ended(False)
    assert policy.ended(False) and policy.transport == "sse_post"
    assert policy.barren == 0


def test_short_lived_connections_count_as_barren_even_with_tokens():
    policy = Fallback.of("auto")
    assert not policy.ended(True, 0.05)  # tokens that queued while it reconnected, then cut at once
    assert policy.ended(True, 0.05) and policy.transport == "sse_post"
    assert not policy.ended(True, 0.05) and not policy.ended(True, 30.0)  # a long-lived one resets the count
    assert not policy.ended(True, 0.05)
