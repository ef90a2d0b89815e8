"""Many EventSources to one origin in real Chromium: over HTTP/1.1 the 7th waits while 6 stream; over
HTTP/2 (nginx terminating TLS) all of them stream on one connection."""

from __future__ import annotations

import pytest

from loadtests.lab import Lab
from loadtests.networks import CHROMIUM_ARGS, OPEN_MANY

from .support import require

pytestmark = pytest.mark.timeout(180)

SOURCES = 8


def first_tokens(url: str, kind: str = "sse_get") -> list[float | None]:
    """For each of SOURCES streams of `kind` (sse_get, sse_post, ws: gateway/names.py) opened at once from a page of
    `url`: ms to its first token, or None if it had none within 3 s."""
    chromium = require("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(ignore_https_errors=True).new_page()
            page.goto(url + "/healthz")
            return page.evaluate(OPEN_MANY, [kind, SOURCES, 3000])
        finally:
            browser.close()


@pytest.fixture(scope="module")
def lab():
    require("nginx")
    require("openssl")
    # The pages' streams go on generating after their browser closes (the detach grace, 10 s by default): with
    # the default 30 s drain the gateway outlived the lab's 8 s stop and was killed, 8 s of every run.
    with Lab(port=0, proxies=("nginx-h2", "nginx-tls"), gateway_env={"GATEWAY_DRAIN_TIMEOUT_S": "1"}) as lab:
        yield lab


@pytest.mark.parametrize("path", ["gateway", "nginx-tls"])
def test_over_http11_the_seventh_eventsource_waits(lab, path):
    first = first_tokens(lab.urls[path])
    streaming = [t for t in first if t is not None]
    assert len(streaming) == 6, first  # Chromium's 6 connections per origin; the others wait for one to free


def test_over_http11_fetch_streams_wait_too_and_websockets_do_not(lab):
    url = lab.urls["nginx-tls"]
    assert sum(t is not None for t in first_tokens(url, "sse_post")) == 6
    assert all(t is not None for t in first_tokens(url, "ws"))  # not pooled with HTTP requests


@pytest.mark.parametrize("kind", ["sse_get", "sse_post"])
def test_over_http2_every_stream_streams(lab, kind):
    first = first_tokens(lab.urls["nginx-h2"], kind)
    assert all(t is not None for t in first), first
