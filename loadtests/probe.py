"""The path doctor: `python -m gateway probe URL` checks one deployment path, per transport.

For SSE, NDJSON and WebSocket it asks the gateway (directly or through
whatever proxies sit in front of it) for simulated streams with a known
schedule, and reports:

- reachable: a stream starts (for WebSocket, the upgrade passes);
- TTFT: time to the first token, against the schedule's own delay;
- arrival: spaced as sent, or bunched (a buffer on the path), with the longest
  hold and the bytes released at once;
- idle: whether a stream survives a pause of N seconds (heartbeats against
  the path's read timeout);
- resume: whether a dropped attach resumes after the last seq seen.

Decoding is the project's client and codecs: the probe sees what users see.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import statistics
import sys
import time
from contextlib import aclosing
from typing import Any

import httpx
import websockets

from gateway.client import TRANSPORTS, Client, GatewayError, StreamResult, Transport
from gateway.codecs import ndjson, sse, ws
from gateway.events import Event, Token
from gateway.names import FORMAT, parse

__all__ = ["probe", "probe_through", "arrival", "report_table", "main"]

_ENCODE = {"sse": sse.encode, "ndjson": ndjson.encode, "ws": lambda e: ws.encode(e).encode()}  # by format


def arrival(result: StreamResult, transport: str, ttft_s: float, itl_s: float) -> dict[str, Any]:
    """Spaced or bunched: compare each token's arrival with when it was sent (jitter 0)."""
    times = [t - result.started for t in result.token_arrivals]
    tokens = result.tokens
    if not times:
        return {"spaced": False, "bursts": 0, "tokens": 0, "max_hold_s": None, "buffer_bytes": None}
    # How late each token is against the schedule, over the least late one (the path's fixed cost).
    late = [t - (ttft_s + i * itl_s) for i, t in enumerate(times)]
    base = min(late)
    hold = max(x - base for x in late)
    # A burst: tokens that arrive together (closer than a quarter of the gap they were sent with).
    bursts: list[list[Event]] = [[tokens[0]]]
    for prev, t, event in zip(times, times[1:], tokens[1:]):
        if t - prev > itl_s / 4:
            bursts.append([])
        bursts[-1].append(event)
    sizes = [sum(len(_ENCODE[FORMAT[parse(transport)]](e)) for e in b) for b in bursts]
    spaced = len(bursts) >= len(tokens) / 2
    # Held to the end: the buffer is at least the stream; otherwise it released every ~N bytes.
    buffer = None if spaced else (sizes[0] if len(sizes) == 1 else int(statistics.median(sizes[:-1])))
    return {"spaced": spaced, "bursts": len(bursts), "tokens": len(tokens), "max_hold_s": round(hold, 3),
            "buffer_bytes": buffer, "held_to_end": not spaced and len(bursts) == 1}


def _failure(exc: BaseException) -> str:
    if isinstance(exc, websockets.InvalidStatus):
        return f"WebSocket upgrade refused (HTTP {exc.response.status_code})"
    if isinstance(exc, websockets.InvalidHandshake):
        return f"WebSocket handshake failed ({exc})"
    if isinstance(exc, GatewayError):
        return f"HTTP {exc}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _stream_check(client: Client, transport: Transport, tokens: int, ttft_ms: float,
                        itl_ms: float) -> dict[str, Any]:
    sim = {"ttft_ms": ttft_ms, "itl_ms": itl_ms, "jitter": 0}
    try:
        r = await client.stream(transport, "probe", max_tokens=tokens, sim=sim, resume=False)
    except Exception as exc:  # any failure to start is the finding
        return {"reachable": False, "error": _failure(exc)}
    out: dict[str, Any] = {"reachable": bool(r.events), "error": None}
    if not r.events:
        out["error"] = "connection closed before any event"
        return out
    if r.cut:
        out["error"] = f"stream cut after {len(r.tokens)} of {tokens} tokens"
    elif r.error:
        out["error"] = f"error event {r.error.code}: {r.error.message}"
    out["ttft_s"] = round(r.ttft, 3) if r.ttft is not None else None
    out["ttft_overhead_s"] = round(r.ttft - ttft_ms / 1000, 3) if r.ttft is not None else None
    out["arrival"] = arrival(r, transport, ttft_ms / 1000, itl_ms / 1000)
    return out


async def _idle_check(client: Client, transport: Transport, idle_s: float) -> dict[str, Any]:
    sim = {"ttft_ms": 50, "itl_ms": 20, "jitter": 0, "stall_after": 2, "stall_ms": idle_s * 1000}
    quiet_from = 0.05 + 0.02  # when the second token was sent, after the start; silence follows
    r = StreamResult()
    try:
        async for _ in client.events(transport, "probe-idle", max_tokens=4, sim=sim, resume=False, result=r):
            pass
    except Exception as exc:
        return {"gap_s": idle_s, "survived": False, "heartbeats": r.heartbeats, "detail": _failure(exc)}
    out = {"gap_s": idle_s, "survived": r.done is not None, "heartbeats": r.heartbeats, "detail": "ok"}
    if r.error:
        out["detail"] = f"error event {r.error.code}: {r.error.message}"
    elif r.cut:
        silent = time.perf_counter() - r.started - quiet_from
        out["cut_after_silence_s"] = round(silent, 1)
        out["detail"] = f"cut after {silent:.1f} s of silence"
    return out


async def _resume_check(client: Client, transport: Transport) -> dict[str, Any]:
    try:
        info = await client.create("probe-resume", max_tokens=20, sim={"ttft_ms": 50, "itl_ms": 30, "jitter": 0})
        first = StreamResult()
        async with aclosing(client.events(transport, stream_id=info["id"], resume=False, result=first)) as it:
            async for event, _ in it:
                if type(event) is Token and event.seq >= 5:
                    break  # leave mid-stream: the connection closes here
        last = first.events[-1].seq
        rest = await client.stream(transport, stream_id=info["id"], after=last, resume=False)
    except Exception as exc:
        return {"ok": False, "detail": _failure(exc)}
    text = first.text + rest.text
    if rest.done is None:
        return {"ok": False, "detail": "the resumed attach ended without done"}
    if not rest.events or rest.events[0].seq != last + 1 or rest.gaps or rest.duplicates:
        return {"ok": False, "detail": f"resumed sequence does not continue after seq {last}"}
    if hashlib.sha256(text.encode()).hexdigest() != rest.done.sha256:
        return {"ok": False, "detail": "resumed text differs from the stream's sha256"}
    return {"ok": True, "detail": f"continued after seq {last}"}


async def probe(url: str, *, idle_s: float = 20.0, tokens: int = 40, itl_ms: float = 50.0,
                ttft_ms: float = 200.0) -> dict[str, Any]:
    """Check every transport of the path at `url`; the result is what `--json` prints."""
    timeout = httpx.Timeout(15.0, read=max(30.0, idle_s + 30.0))
    async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=timeout) as http:
        client = Client(url, http=http)
        checks = []
        for t in TRANSPORTS:
            checks.append(_stream_check(client, t, tokens, ttft_ms, itl_ms))
            checks.append(_resume_check(client, t))
            if idle_s > 0:
                checks.append(_idle_check(client, t, idle_s))
        done = iter(await asyncio.gather(*checks))
    transports = {}
    for t in TRANSPORTS:
        report = next(done)
        report["resume"] = next(done)
        report["idle"] = next(done) if idle_s > 0 else None
        report["ok"] = bool(
            report["reachable"] and report["error"] is None and report["arrival"]["spaced"]
            and report["resume"]["ok"] and (report["idle"] is None or report["idle"]["survived"]))
        transports[t] = report
    return {"url": url, "params": {"tokens": tokens, "itl_ms": itl_ms, "ttft_ms": ttft_ms, "idle_s": idle_s},
            "ok": all(r["ok"] for r in transports.values()), "transports": transports}


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} KB"


def _arrival_text(a: dict[str, Any]) -> str:
    if a["spaced"]:
        return f"spaced ({a['bursts']}/{a['tokens']} apart)"
    where = (f"held to the end (>= {_kb(a['buffer_bytes'])})" if a["held_to_end"]
             else f"{a['bursts']} bursts of ~{_kb(a['buffer_bytes'])}")
    return f"BUNCHED: {where}, held up to {a['max_hold_s']:.2f} s"


def report_table(report: dict[str, Any]) -> str:
    p = report["params"]
    idle_head = f"idle {p['idle_s']:g} s"
    rows = [("transport", "reachable", "TTFT", "arrival", idle_head, "resume")]
    advice: list[str] = []
    for t, r in report["transports"].items():
        if not r["reachable"]:
            rows.append((t, f"NO: {r['error']}", "-", "-", "-", "-"))
            if t == "ws":
                advice.append("ws: the proxy must pass the upgrade (nginx: proxy_http_version 1.1, "
                              "proxy_set_header Upgrade $http_upgrade, Connection \"upgrade\")")
            continue
        ttft = f"{r['ttft_s']:.3f} s" if r.get("ttft_s") is not None else "-"
        arr = _arrival_text(r["arrival"]) + (f" [{r['error']}]" if r["error"] else "")
        if not r["arrival"]["spaced"]:
            advice.append(f"{t}: the path holds events back (nginx: proxy_buffering off or the gateway's "
                          "X-Accel-Buffering: no, and stream types out of gzip_types; HAProxy: option "
                          "http-no-delay)")
        idle = r["idle"]
        if idle is None:
            idle_text = "skipped"
        else:
            idle_text = (f"survived ({idle['heartbeats']} heartbeats)" if idle["survived"]
                         else f"FAILED: {idle['detail']}")
            if not idle["survived"]:
                advice.append(f"{t}: the path's idle timeout is shorter than {p['idle_s']:g} s: raise it "
                              "(nginx proxy_read_timeout, HAProxy timeout server/tunnel) above the "
                              "gateway's heartbeat (GATEWAY_HEARTBEAT_S), or send heartbeats more often")
        resume = r["resume"]
        resume_text = "ok" if resume["ok"] else f"FAILED: {resume['detail']}"
        if not resume["ok"]:
            advice.append(f"{t}: resume failed: replicas need a shared store (STREAM_STORE=redis) "
                          "or sticky routing")
        rows.append((t, "yes", ttft, arr, idle_text, resume_text))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    via = f" through the {report['profile']} profile" if report.get("profile") else ""
    head = (f"probe {report['url']}{via}: {p['tokens']} tokens sent {p['itl_ms']:g} ms apart, "
            f"the first after {p['ttft_ms']:g} ms")
    lines = [head, ""] + ["  ".join(f"{c:<{w}}" for c, w in zip(row, widths)) + "  " + row[-1] for row in rows]
    lines.append("")
    lines.append("verdict: every transport streams on this path" if report["ok"]
                 else "verdict: problems found\n" + "\n".join(f"  - {a}" for a in advice))
    return "\n".join(lines)


async def probe_through(url: str, profile: str, **kw: Any) -> dict[str, Any]:
    """`probe` with a network profile (lab/links.py) between this client and `url`, e.g. "3g"."""
    from urllib.parse import urlsplit

    from lab.links import Relay

    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError("a network profile relays plain http URLs (put it in front of the TLS proxy instead)")
    async with Relay(profile, (parts.hostname, parts.port or 80)) as relay:
        report = await probe(relay.url + parts.path, **kw)
    report["url"], report["profile"] = url, profile
    return report


def main(url: str, *, as_json: bool = False, idle_s: float = 20.0, tokens: int = 40, itl_ms: float = 50.0,
         profile: str | None = None) -> int:
    """Exit status 0 when every transport passes, 1 when the path has a problem."""
    kw = {"idle_s": idle_s, "tokens": tokens, "itl_ms": itl_ms}
    report = asyncio.run(probe_through(url, profile, **kw) if profile else probe(url, **kw))
    print(json.dumps(report, indent=2) if as_json else report_table(report))
    sys.stdout.flush()
    return 0 if report["ok"] else 1
