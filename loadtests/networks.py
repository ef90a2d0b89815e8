"""Measured runs on the lab's network profiles and paths: the report's "mobile networks", "strict proxies",
"many tabs" and "dead connections" rows.

    python -m loadtests networks --out out/networks       # ~6 min: networks.json and networks.md there

Everything runs against a lab started here (the gateway on loopback, real nginx and HAProxy, profile
relays from lab/links.py in this process) and stops with it:

- mobile networks: per profile and transport, `streams` concurrent streams with the Python client, each
  through its own link (the relay applies the profile per connection): time to first token, and the
  longest wait between two tokens a reader saw (a stall, a reset and its resume).
- strict proxies: per path, whether each transport streams, and how long the client's automatic
  fallback (WebSocket -> SSE -> NDJSON) takes to start streaming elsewhere.
- many tabs: in Chromium, 8 concurrent streams of one kind to one origin, over HTTP/1.1 and HTTP/2:
  how many stream at once.
- dead connections: streams through a relay that goes silent (no FIN/RST) at a known moment: the time
  until each client notices (its read timeout) and until its next new token, beside the gateway's
  heartbeat interval, the WebSocket ping and the client's read timeout. Clients: the Python client, the
  Locust users' client (loadtests/streaming.py) and the page in Chromium.

Each figure is the mean over `runs` runs of a per-run median, with a 95% interval over the runs
(loadtests/compare/stats.py); `verdicts()` applies its rule (a winner only when its interval clears the
runner-up's by 10%, else a tie; under 200 samples or 3 runs, not judged) and gives the report its rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from gateway.client import Client, StreamResult
from gateway.sources.simulated import expected_text
from lab.links import PROFILES, Profile, Relay

from .lab import Lab

__all__ = ["mobile", "strict", "many_tabs", "dead_connections", "verdicts", "tables", "run", "markdown", "main"]

TRANSPORTS = ("sse_post", "ndjson", "ws")  # the Python client's one-shot transports (gateway/names.py)
MANY_TABS = ("sse_get", "sse_post", "ws")  # EventSource, fetch + SSE, WebSocket
HEARTBEAT_S = 1.0  # the lab gateway's heartbeat for these runs
READ_TIMEOUT_S = 3.0  # the clients' read timeout: three heartbeats
WS_PING = "server: every 20 s, 20 s timeout (uvicorn's default); clients: none"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--ignore-certificate-errors"]


def _hostport(url: str) -> tuple[str, int]:
    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    return host, int(port.rstrip("/"))


def _longest_wait(r: StreamResult) -> float | None:
    """The longest gap between two tokens (after the first): a stall, or a cut and its resume."""
    times = r.token_arrivals
    return max(b - a for a, b in zip(times, times[1:])) if len(times) > 1 else None


def _exact(r: StreamResult, prompt: str, n: int) -> bool:
    return r.done is not None and r.text == expected_text(prompt, 0, n) and not r.gaps and not r.duplicates


def _figure(per_run: list[list[float]], of: str) -> dict | None:
    """Mean over runs of each run's median, with the 95% interval over runs."""
    from .compare.stats import figure

    medians = [statistics.median(v) if v else None for v in per_run]
    f = figure(medians, sum(len(v) for v in per_run), of)
    return None if f is None else f.as_dict()


# -- mobile networks ----------------------------------------------------------------------------

async def _through(profile: Profile, upstream: str, transport: str, streams: int, sim: dict,
                   n: int, read_timeout: float) -> list[StreamResult]:
    async with Relay(profile, _hostport(upstream)) as relay, Client(relay.url, read_timeout=read_timeout) as c:
        return await asyncio.gather(*(c.stream(transport, "mobile", max_tokens=n, seed=0, sim=sim)
                                      for _ in range(streams)))


async def mobile(lab: Lab, runs: int = 3, streams: int = 70, profiles: tuple[str, ...] | None = None) -> dict:
    """Per profile and transport: TTFT and the longest wait between tokens, over `runs` runs."""
    out: dict[str, Any] = {}
    for name in profiles or ("good-4g", "3g", "flaky-wifi", "train"):
        profile = PROFILES[name]
        # Streams long enough to meet the impairment once: past the first stall or reset.
        seconds = max(6.0, profile.stall_every_s + 3, profile.reset_every_s + 3)
        sim = {"ttft_ms": 300, "itl_ms": 50, "jitter": 0}
        n = int((seconds - 0.3) / 0.05)
        per = {t: {"ttft": [], "wait": [], "exact": 0, "streams": 0, "reconnects": 0, "bytes": 0, "tokens": 0}
               for t in TRANSPORTS}
        for _ in range(runs):
            # One transport at a time: `streams` links at once measure the links, not the load generator.
            results = [await _through(profile, lab.urls["gateway"], t, streams, sim, n, READ_TIMEOUT_S)
                       for t in TRANSPORTS]
            for t, rs in zip(TRANSPORTS, results):
                p = per[t]
                p["ttft"].append([r.ttft for r in rs if r.ttft is not None])
                p["wait"].append([w for r in rs if (w := _longest_wait(r)) is not None])
                p["exact"] += sum(_exact(r, "mobile", n) for r in rs)
                p["streams"] += len(rs)
                p["reconnects"] += sum(r.reconnects for r in rs)
                p["bytes"] += sum(r.bytes for r in rs)
                p["tokens"] += sum(len(r.tokens) for r in rs)
        rows = {t: {"ttft_s": _figure(p["ttft"], "streams"), "longest_wait_s": _figure(p["wait"], "streams"),
                    "exact": p["exact"], "streams": p["streams"], "reconnects": p["reconnects"],
                    "bytes_per_token": round(p["bytes"] / p["tokens"], 1) if p["tokens"] else None}
                for t, p in per.items()}
        judge = "longest_wait_s" if profile.stall_every_s or profile.reset_every_s else "ttft_s"
        out[name] = {"profile": profile.describe(), "seconds": seconds, "transports": rows, "judged_by": judge}
    return out


# -- strict proxies -----------------------------------------------------------------------------

async def strict(lab: Lab, runs: int = 3, streams: int = 20) -> dict:
    """Per path: does each transport stream; the automatic client's time to fall back and to first token."""
    sim = {"ttft_ms": 300, "itl_ms": 20, "jitter": 0}
    n = 30
    out: dict[str, Any] = {}
    for path in ("nginx-strict", "haproxy-ws-cut", "nginx-defaults"):
        if path not in lab.urls:
            continue
        row: dict[str, Any] = {"transports": {}}
        async with Client(lab.urls[path], read_timeout=READ_TIMEOUT_S) as c:
            for t in TRANSPORTS:
                try:
                    r = await c.stream(t, "strict", max_tokens=n, seed=0, sim=sim, resume=False)
                    row["transports"][t] = "streams" if _exact(r, "strict", n) else "cut"
                except Exception as exc:  # the refusal is the finding
                    row["transports"][t] = f"refused ({type(exc).__name__})"
            fall: list[list[float]] = []
            ttft: list[list[float]] = []
            exact = total = 0
            for _ in range(runs):
                rs = await asyncio.gather(*(c.stream("auto", "strict", max_tokens=n, seed=0, sim=sim)
                                            for _ in range(streams)))
                fall.append([r.fallbacks[0][2] - r.started for r in rs if r.fallbacks])
                ttft.append([r.ttft for r in rs if r.ttft is not None])
                exact += sum(_exact(r, "strict", n) for r in rs)
                total += len(rs)
        row["auto"] = {"fallback_s": _figure(fall, "streams"), "ttft_s": _figure(ttft, "streams"),
                       "exact": exact, "streams": total, "ended_on": rs[-1].transport}
        out[path] = row
    return out


# -- many tabs ----------------------------------------------------------------------------------

OPEN_MANY = """async ([kind, n, waitMs]) => {
  const sim = {ttft_ms: 50, itl_ms: 100, jitter: 0};
  const body = (i) => JSON.stringify({prompt: 'tab ' + i, max_tokens: 150, sim});
  const json = {method: 'POST', headers: {'Content-Type': 'application/json'}};
  const first = new Array(n).fill(null);
  const t0 = performance.now();
  const mark = (i) => { if (first[i] === null) first[i] = performance.now() - t0; };
  const stops = [];
  const ids = [];
  for (let i = 0; kind === 'sse_get' && i < n; i++) {  // first: a POST waits too while 6 stream
    ids.push((await (await fetch('/v1/streams', {...json, body: body(i)})).json()).id);
  }
  for (let i = 0; i < n; i++) {
    if (kind === 'sse_get') {
      const es = new EventSource('/v1/streams/' + ids[i] + '/sse');
      es.addEventListener('token', () => mark(i));
      stops.push(() => es.close());
    } else if (kind === 'sse_post') {
      const ctl = new AbortController();
      fetch('/v1/sse', {...json, body: body(i), signal: ctl.signal}).then(async (r) => {
        const reader = r.body.getReader();
        for (;;) { const {value, done} = await reader.read(); if (done) break;
                   if (new TextDecoder().decode(value).includes('event: token')) mark(i); }
      }).catch(() => {});
      stops.push(() => ctl.abort());
    } else {
      const ws = new WebSocket(location.origin.replace('http', 'ws') + '/v1/ws');
      ws.onopen = () => ws.send(JSON.stringify({type: 'start', prompt: 'tab ' + i, max_tokens: 150, sim}));
      ws.onmessage = (e) => { if (JSON.parse(e.data).type === 'token') mark(i); };
      stops.push(() => ws.close());
    }
  }
  await new Promise((resolve) => setTimeout(resolve, waitMs));
  stops.forEach((stop) => stop());
  return first;
}"""


async def many_tabs(lab: Lab, chromium: str, n: int = 8, runs: int = 3) -> dict:
    """In Chromium, `n` streams of one kind opened at once from one page: how many stream within 3 s."""
    from playwright.async_api import async_playwright

    out: dict[str, Any] = {}
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            for path, protocol in (("nginx-tls", "HTTP/1.1"), ("nginx-h2", "HTTP/2")):
                if path not in lab.urls:
                    continue
                for kind in MANY_TABS:
                    counts = []
                    for _ in range(runs):
                        page = await (await browser.new_context(ignore_https_errors=True)).new_page()
                        await page.goto(lab.urls[path] + "/healthz")
                        first = await page.evaluate(OPEN_MANY, [kind, n, 3000])
                        counts.append(sum(t is not None for t in first))
                        await page.context.close()
                    out[f"{protocol} {kind}"] = {"path": path, "opened": n, "streaming": counts}
        finally:
            await browser.close()
    return out


# -- dead connections ---------------------------------------------------------------------------

async def _python_dead(upstream: str, transport: str, streams: int, break_after: float) -> list[dict]:
    sim = {"ttft_ms": 100, "itl_ms": 50, "jitter": 0}
    async with Relay(replace(PROFILES["half-open"], dead_after_s=0, rtt_ms=0, rate_kbit=0, hold_s=60),
                     _hostport(upstream)) as relay:
        async with Client(relay.url, read_timeout=READ_TIMEOUT_S) as c:
            results = [StreamResult() for _ in range(streams)]

            async def one(r: StreamResult) -> None:
                async for _ in c.events(transport, "dead", max_tokens=200, seed=0, sim=sim, result=r):
                    pass

            tasks = [asyncio.create_task(one(r)) for r in results]
            await _streaming(results, break_after)
            relay.break_all()
            broke = relay.stats.breaks[-1]
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
    return [_after_break(r.cuts, r.token_arrivals, broke) for r in results]


async def _streaming(results: list[StreamResult], at_least: float, limit: float = 20.0) -> None:
    """Wait `at_least` seconds and until every stream has had a token (on a busy machine that takes longer)."""
    await asyncio.sleep(at_least)
    deadline = time.monotonic() + limit
    while any(not r.token_arrivals for r in results) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


def _after_break(cuts: list[float], arrivals: list[float], broke: float) -> dict:
    """Seconds from the break to the first cut noticed after it, and to the first token after that.
    A stream with no token before the break was not on a broken connection: no figures."""
    if not any(a < broke for a in arrivals):
        return {"notice_s": None, "resume_s": None}
    notice = next((c - broke for c in cuts if c >= broke), None)
    resume = next((a - broke for a in arrivals if a > broke + (notice or 0)), None)
    return {"notice_s": notice, "resume_s": resume}


async def _locust_dead(upstream: str, transport: str, streams: int, break_after: float) -> list[dict]:
    """The Locust users' client (blocking; here one thread per stream)."""
    from .streaming import Run, StreamClient

    body = {"prompt": "dead", "max_tokens": 200, "seed": 0, "sim": {"ttft_ms": 100, "itl_ms": 50, "jitter": 0}}
    async with Relay(replace(PROFILES["half-open"], dead_after_s=0, rtt_ms=0, rate_kbit=0, hold_s=60),
                     _hostport(upstream)) as relay:
        runs = [Run() for _ in range(streams)]

        def one(run: Run) -> Run:
            client = StreamClient(relay.url, read_timeout=READ_TIMEOUT_S)
            try:
                for _ in client.events(transport, body, run):
                    pass
            finally:
                client.close()
            return run

        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(streams) as pool:  # every stream at once (the default pool has a few threads)
            tasks = [loop.run_in_executor(pool, one, run) for run in runs]
            await _streaming(runs, break_after)
            relay.break_all()
            broke = relay.stats.breaks[-1]
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
    return [_after_break(r.cuts, r.token_arrivals, broke) for r in runs]


PAGE_WATCH = """() => window.demo.state().map((p) => [p.kind, p.reconnects, p.tokens, p.ended])"""


async def _page_dead(upstream: str, chromium: str, break_after: float, limit_s: float = 15.0) -> list[dict]:
    """The page's four panels through a relay that goes silent: when each panel reconnects and gets a new token."""
    from playwright.async_api import async_playwright

    async with Relay(replace(PROFILES["half-open"], dead_after_s=0, rtt_ms=0, rate_kbit=0, hold_s=60),
                     _hostport(upstream)) as relay, async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(f"{relay.url}/?read_timeout_s={READ_TIMEOUT_S:g}")
            await page.fill("#max_tokens", "400")
            await page.fill("#ttft_ms", "100")
            await page.fill("#itl_ms", "50")
            await page.click("#start")
            await asyncio.sleep(break_after)
            await page.wait_for_function("() => demo.state().every((p) => p.tokens > 5)", timeout=30_000)
            before = {k: (rc, tok) for k, rc, tok, _ in await page.evaluate(PAGE_WATCH)}
            relay.break_all()
            broke = time.perf_counter()
            seen: dict[str, dict] = {k: {"notice_s": None, "resume_s": None} for k in before}
            while time.perf_counter() - broke < limit_s and any(v["resume_s"] is None for v in seen.values()):
                await asyncio.sleep(0.1)
                now = time.perf_counter() - broke
                for kind, rc, tokens, _ in await page.evaluate(PAGE_WATCH):
                    s = seen[kind]
                    if s["notice_s"] is None and rc > before[kind][0]:
                        s["notice_s"] = now
                    if s["resume_s"] is None and s["notice_s"] is not None and tokens > before[kind][1]:
                        s["resume_s"] = now
            await page.click("#cancel")
        finally:
            await browser.close()
    return [{"client": f"page {k}", **v, "limit_s": limit_s} for k, v in seen.items()]


async def dead_connections(lab: Lab, runs: int = 3, streams: int = 70, chromium: str | None = None) -> dict:
    upstream = lab.urls["gateway"]
    rows: dict[str, dict] = {}
    for t in TRANSPORTS:
        notice, resume = [], []
        for _ in range(runs):
            got = await _python_dead(upstream, t, streams, 1.0)
            notice.append([g["notice_s"] for g in got if g["notice_s"] is not None])
            resume.append([g["resume_s"] for g in got if g["resume_s"] is not None])
        rows[f"python {t}"] = {"notice_s": _figure(notice, "streams"), "resume_s": _figure(resume, "streams"),
                               "read_timeout_s": READ_TIMEOUT_S, "resumed": sum(map(len, resume)),
                               "streams": runs * streams}
    for t in ("sse_post", "ndjson", "ws"):
        notice, resume = [], []
        for _ in range(runs):
            got = await _locust_dead(upstream, t, streams, 1.0)
            notice.append([g["notice_s"] for g in got if g["notice_s"] is not None])
            resume.append([g["resume_s"] for g in got if g["resume_s"] is not None])
        rows[f"locust {t}"] = {"notice_s": _figure(notice, "streams"), "resume_s": _figure(resume, "streams"),
                               "read_timeout_s": READ_TIMEOUT_S, "resumed": sum(map(len, resume)),
                               "streams": runs * streams}
    if chromium:
        per: dict[str, dict[str, list]] = {}
        for _ in range(runs):
            for g in await _page_dead(upstream, chromium, 1.5):
                p = per.setdefault(g["client"], {"notice": [], "resume": [], "limit_s": g["limit_s"]})
                p["notice"].append([g["notice_s"]] if g["notice_s"] is not None else [])
                p["resume"].append([g["resume_s"]] if g["resume_s"] is not None else [])
        for client, p in per.items():
            read = None if client == "page sse_get" else READ_TIMEOUT_S
            rows[client] = {"notice_s": _figure(p["notice"], "runs"), "resume_s": _figure(p["resume"], "runs"),
                            "read_timeout_s": read, "resumed": sum(map(len, p["resume"])), "streams": runs,
                            "limit_s": p["limit_s"]}
    return {"heartbeat_s": HEARTBEAT_S, "ws_ping": WS_PING, "read_timeout_s": READ_TIMEOUT_S, "clients": rows}


# -- verdicts ------------------------------------------------------------------------------------

RULES = {
    "mobile networks": "Per profile (lab/links.py), every stream exact first; then on links without stalls or "
                       "resets the lowest TTFT, with them the shortest longest wait between tokens; a winner only "
                       "when it wins or ties on every profile and wins on one, else a tie.",
    "strict proxies": "A transport must stream through every strict path (a proxy that refuses upgrades, one "
                      "that cuts WebSocket after the upgrade, stock nginx); those tie. The automatic client's "
                      "time to fall back is shown for the rest.",
    "many tabs": "Streams of one kind opened at once from one page in Chromium: every one streaming wins; "
                 "over HTTP/1.1 and over HTTP/2 separately.",
    "dead connections": "Break to the next new token after a half-open break, per transport (the Python client, "
                        "read timeout as shown); a client that never notices loses. Interval rule as above.",
}


def verdicts(m: dict) -> list[dict]:
    """The four rows for the report's verdict table, from a networks run: need, winner, verdict, rule, why."""
    from .compare.stats import Figure, decide

    def fig(f: dict | None) -> Figure | None:
        if f is None:
            return None
        inf = float("inf")
        return Figure(f["value"], -inf if f["lo"] is None else f["lo"], inf if f["hi"] is None else f["hi"],
                      tuple(f["runs"]), f["samples"], f["of"])

    rows = []
    mob = m.get("mobile_networks")
    if mob:
        per: dict[str, str] = {}
        inexact = sorted({t for p in mob.values() for t, r in p["transports"].items()
                          if r["exact"] < r["streams"]})
        tied_everywhere = set(TRANSPORTS) - set(inexact)
        won = set()
        for name, p in mob.items():
            d = decide({t: fig(r[p["judged_by"]]) for t, r in p["transports"].items()})
            per[name] = d.label
            tied_everywhere &= set(d.tied) if d.order else set()
            if d.winner:
                won.add(d.winner)
        winner = next(iter(won & tied_everywhere)) if len(won & tied_everywhere) == 1 else None
        label = winner or ("tie: " + ", ".join(sorted(tied_everywhere)) if tied_everywhere else "not judged")
        why = "; ".join(f"{n}: {v}" for n, v in per.items())
        if inexact:
            why += f"; not every stream exact on {', '.join(inexact)}"
        rows.append({"need": "mobile networks", "winner": winner, "verdict": label, "rule": RULES["mobile networks"],
                     "why": why})
    st = m.get("strict_proxies")
    if st:
        ok = [t for t in TRANSPORTS if all(r["transports"][t] == "streams" for r in st.values())]
        fails = "; ".join(f"{t} via {p}: {r['transports'][t]}" for p, r in st.items() for t in TRANSPORTS
                          if r["transports"][t] != "streams")
        fall = "; ".join(f"auto via {p}: falls back in {_fmt(r['auto']['fallback_s'])}, "
                         f"{r['auto']['exact']}/{r['auto']['streams']} exact" for p, r in st.items())
        winner = ok[0] if len(ok) == 1 else None
        rows.append({"need": "strict proxies", "winner": winner,
                     "verdict": winner or ("tie: " + ", ".join(ok) if ok else "none"), "rule": RULES["strict proxies"],
                     "why": "; ".join(x for x in (fails, fall) if x)})
    tabs = m.get("many_tabs")
    if tabs:
        parts, labels = [], []
        for protocol in ("HTTP/1.1", "HTTP/2"):
            full = [k for k in MANY_TABS if f"{protocol} {k}" in tabs
                    and all(c == tabs[f"{protocol} {k}"]["opened"] for c in tabs[f"{protocol} {k}"]["streaming"])]
            labels.append(f"{protocol}: {', '.join(full) or 'none'}")
            parts += [f"{protocol} {k} {min(tabs[f'{protocol} {k}']['streaming'])}/"
                      f"{tabs[f'{protocol} {k}']['opened']}" for k in MANY_TABS if f"{protocol} {k}" in tabs]
        rows.append({"need": "many tabs", "winner": None, "verdict": "; ".join(labels), "rule": RULES["many tabs"],
                     "why": "streaming at once (worst run): " + ", ".join(parts)})
    dead = m.get("dead_connections")
    if dead:
        clients = dead["clients"]
        cands = {t: fig(clients[f"python {t}"]["resume_s"]) for t in TRANSPORTS if f"python {t}" in clients}
        d = decide(cands)
        never = [c for c, r in clients.items() if r["resume_s"] is None]
        why = (", ".join(f"{t} {_fmt(clients[f'python {t}']['resume_s'])}" for t in TRANSPORTS
                         if f"python {t}" in clients)
               + f"; heartbeat {dead['heartbeat_s']:g} s, read timeout {dead['read_timeout_s']:g} s, "
               f"WebSocket ping: {dead['ws_ping']}")
        if never:
            why += f"; never noticed: {', '.join(never)}"
        rows.append({"need": "dead connections", "winner": d.winner, "verdict": d.label,
                     "rule": RULES["dead connections"], "why": why})
    return rows


# -- the whole run ------------------------------------------------------------------------------

PATHS = ("nginx-strict", "haproxy-ws-cut", "nginx-defaults", "nginx-h2", "nginx-tls")


async def _measure(lab: Lab, runs: int, streams: int, chromium: str | None) -> dict:
    out: dict[str, Any] = {"runs": runs, "streams": streams, "heartbeat_s": HEARTBEAT_S,
                           "read_timeout_s": READ_TIMEOUT_S}
    out["dead_connections"] = await dead_connections(lab, runs, streams, chromium)
    out["strict_proxies"] = await strict(lab, runs, streams)
    if chromium:
        out["many_tabs"] = await many_tabs(lab, chromium, runs=runs)
    out["mobile_networks"] = await mobile(lab, runs, streams)
    return out


def run(runs: int = 3, streams: int = 70, chromium: str | None = None) -> dict:
    started = time.time()
    with Lab(port=0, proxies=tuple(p for p in PATHS), gateway_env={"GATEWAY_HEARTBEAT_S": str(HEARTBEAT_S)}) as lab:
        out = asyncio.run(_measure(lab, runs, streams, chromium))
    out["seconds"] = round(time.time() - started)
    return out


def _fmt(f: dict | None, unit: str = "s") -> str:
    if f is None:
        return "-"
    lo, hi = f["lo"], f["hi"]
    span = f" [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else ""
    return f"{f['value']:.2f}{span} {unit} (n={f['samples']})"


def tables(m: dict) -> list:
    """The four rows' tables (the report's Table: markdown and HTML from the same cells)."""
    from .compare.report import Table

    out = []
    d = m.get("dead_connections")
    if d:
        t = Table("Dead connections: a half-open break (no FIN, no RST)",
                  ["client", "read timeout", "break to noticing", "break to the next new token", "resumed"],
                  note=f"Gateway heartbeat {d['heartbeat_s']:g} s; WebSocket ping: {d['ws_ping']}.",
                  id="dead-connections")
        for client, r in d["clients"].items():
            read = f"{r['read_timeout_s']:g} s" if r["read_timeout_s"] else "none"
            never = f"not within {r['limit_s']:g} s" if r.get("limit_s") else "-"
            t.rows.append([client, read, _fmt(r["notice_s"]) if r["notice_s"] else never,
                           _fmt(r["resume_s"]) if r["resume_s"] else never, f"{r['resumed']}/{r['streams']}"])
        out.append(t)
    s = m.get("strict_proxies")
    if s:
        t = Table("Strict proxies", ["path", "SSE", "NDJSON", "WebSocket", "auto: time to fall back", "auto: TTFT",
                                     "auto: exact"], id="strict-proxies",
                  note="One stream per transport, then the automatic client (WebSocket -> SSE -> NDJSON).")
        for path, r in s.items():
            tr, a = r["transports"], r["auto"]
            t.rows.append([path, tr["sse_post"], tr["ndjson"], tr["ws"], _fmt(a["fallback_s"]), _fmt(a["ttft_s"]),
                           f"{a['exact']}/{a['streams']} on {a['ended_on']}"])
        out.append(t)
    tabs = m.get("many_tabs")
    if tabs:
        t = Table("Many tabs: 8 streams of one kind from one page (Chromium)", ["protocol and kind",
                  "streaming at once, per run"], id="many-tabs")
        for key, r in tabs.items():
            t.rows.append([key, ", ".join(f"{c}/{r['opened']}" for c in r["streaming"])])
        out.append(t)
    mob = m.get("mobile_networks")
    if mob:
        t = Table("Mobile networks: the Python client, each stream on its own link",
                  ["profile", "transport", "TTFT", "longest wait between tokens", "exact", "resumes",
                   "bytes/token"], id="mobile-networks")
        for name, p in mob.items():
            for tr, r in p["transports"].items():
                t.rows.append([f"{name} ({p['profile']})", tr, _fmt(r["ttft_s"]), _fmt(r["longest_wait_s"]),
                               f"{r['exact']}/{r['streams']}", str(r["reconnects"]), str(r["bytes_per_token"])])
        out.append(t)
    return out


def markdown(m: dict) -> str:
    from .compare.report import Table

    head = (f"Runs: {m['runs']} per cell; gateway heartbeat {m['heartbeat_s']:g} s; client read timeout "
            f"{m['read_timeout_s']:g} s; {m.get('seconds', '?')} s in all.\n\n")
    v = Table("Verdicts", ["need", "verdict", "measured", "rule"], id="network-verdicts")
    v.rows = [[r["need"], r["verdict"], r["why"], r["rule"]] for r in verdicts(m)]
    return head + "\n".join([v.markdown(), *(t.markdown() for t in tables(m))])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests networks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="out/networks", help="folder for networks.json and networks.md")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--streams", type=int, default=70, help="concurrent streams per cell and run")
    parser.add_argument("--no-browser", action="store_true", help="skip the Chromium rows")
    args = parser.parse_args(argv)
    from .lab import find_tool

    chromium = None if args.no_browser else find_tool("chromium")
    m = run(args.runs, args.streams, chromium)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "networks.json").write_text(json.dumps(m, indent=1))
    (out / "networks.md").write_text(markdown(m))
    print(markdown(m))
    return 0


if __name__ == "__main__":
    sys.exit(main())
