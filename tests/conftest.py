from __future__ import annotations

import pytest
from hypothesis import settings

from .support import CHROMIUM_ARGS, FLAVOURS, SERVERS, FakeOllama, RedisServer, gateway, require

# Hypothesis' 200 ms deadline fails examples that a loaded 2-core machine merely delays; sockets or not,
# no test here is about the speed of one example.
settings.register_profile("shared-machine", deadline=None)
settings.load_profile("shared-machine")

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


def _own_server(metafunc) -> bool:
    """The test names its servers itself (a `parametrize("server", ...)`) or its module has a `server` fixture."""
    if any(m.args and m.args[0] == "server" for m in metafunc.definition.iter_markers("parametrize")):
        return True
    return hasattr(metafunc.module, "server")


def pytest_generate_tests(metafunc):
    # A test marked `every_server` runs on each server `gateway serve --server` offers; the rest on
    # the default only, so the suite's length grows by the core subset, not threefold.
    # Every test that uses `server` is parametrized (the rest with the default alone): with a plain fixture
    # for the rest, a module-scoped gateway set up for a marked test on granian was reused by the next
    # unmarked test (`--setup-plan` showed it).
    if "server" in metafunc.fixturenames and not _own_server(metafunc):
        every = metafunc.definition.get_closest_marker("every_server")
        metafunc.parametrize("server", SERVERS if every else SERVERS[:1], scope="module")
    # A test marked `every_flavour` runs on each store server (FLAVOURS: redis-server, valkey-server), the
    # rest that use the store on redis-server. Every such test is parametrized (the rest with one value), so
    # a module's store and replicas are started once per flavour and never reused across flavours.
    if "flavour" in metafunc.fixturenames:
        every = metafunc.definition.get_closest_marker("every_flavour")
        metafunc.parametrize("flavour", FLAVOURS if every else FLAVOURS[:1], scope="module")


@pytest.fixture(scope="module")
def gw(server):
    """One real gateway (on `server`, a free loopback port) per test module and server."""
    with gateway(FAST, server=server) as g:
        yield g


@pytest.fixture(scope="module")
def redis(flavour):
    """A redis-server (or valkey-server) of the module's own (the replicas' shared store)."""
    server = RedisServer(flavour=flavour)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def upstream():
    """A gateway that relays point at (gateway A); its idle timeout is long, so a stall is the relay's to notice."""
    with gateway({**FAST, "GATEWAY_IDLE_TIMEOUT_S": "30"}) as a:
        yield a


@pytest.fixture(scope="module")
def ollama():
    """The stand-in Ollama (tests/support.py `FakeOllama`)."""
    fake = FakeOllama()
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def browser():
    """Chromium through Playwright, for the module."""
    chromium = require("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
