"""One name per transport (gateway/names.py): every place that names a transport uses those names."""

from __future__ import annotations

import ast
import re

import pytest

from gateway import names
from gateway.client import TRANSPORTS as CLIENT_TRANSPORTS
from gateway.fallback import ORDER
from gateway.metrics import Stats
from gateway.names import FALLBACK, PAGE, STREAMED, Transport, counted_as, parse
from gateway.page import STATIC, render_index
from loadtests.compare.matrix import TRANSPORTS as REPORTED
from loadtests.compare.plots import COLORS
from loadtests.streaming import TRANSPORTS as LOCUST_TRANSPORTS
from loadtests.streaming import USER_CLASSES

from .support import ROOT

VALUES = {t.value for t in Transport}


def test_the_page_renders_a_panel_per_page_transport_and_its_clients_use_the_names():
    page = render_index()
    assert re.findall(r'class="panel" data-kind="([^"]+)"', page) == [t.value for t in PAGE]
    assert '"fallback": ["ws", "sse_post", "ndjson"]' in page
    js = (STATIC / "app.js").read_text()
    clients = js.split("const CLIENTS = {", 1)[1].split("};", 1)[0]
    assert re.findall(r"^\s*(\w+): \(p\)", clients, re.M) == [t.value for t in PAGE]
    for old in ('"eventsource"', '"fetch-sse"', '"fetch-ndjson"', '"websocket"', '"fetch-responses"'):
        assert old not in js and old not in page, old


def test_each_locust_user_names_its_transport_from_gateway_names():
    tree = ast.parse((ROOT / "loadtests" / "locustfile.py").read_text())
    users = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if isinstance(stmt, ast.Assign) and [t.id for t in stmt.targets if isinstance(t, ast.Name)] == ["transport"]:
                    value = stmt.value
                    if isinstance(value, ast.Constant):
                        users[node.name] = value.value
                    else:  # Transport.X.value
                        users[node.name] = Transport[value.value.attr].value
    assert {users[cls]: cls for cls in USER_CLASSES.values()} == USER_CLASSES
    assert set(USER_CLASSES) - {"auto"} <= VALUES and set(LOCUST_TRANSPORTS) - {"auto"} <= VALUES


def test_report_metrics_client_and_fallback_use_the_names():
    assert set(REPORTED) <= VALUES and set(REPORTED) <= set(COLORS)
    assert set(Stats().transports) == {t.value for t in STREAMED}
    assert set(CLIENT_TRANSPORTS) <= VALUES
    assert ORDER == FALLBACK


def test_the_earlier_name_sse_is_an_alias_of_sse_post_and_others_are_refused():
    assert parse("sse") is Transport.SSE_POST and parse("sse_get") is Transport.SSE_GET
    assert counted_as("sse") == ("sse_post", "sse_get")  # a fetch + SSE client resumes by GET
    with pytest.raises(ValueError, match="unknown transport 'websocket'"):
        parse("websocket")
    assert set(names.LABELS) == set(names.ROUTES) == set(names.FORMAT) == set(names.COLORS) == set(Transport)
