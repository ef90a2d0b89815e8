"""From measured numbers to verdicts: each need has a stated rule, and the rule picks the winner.

Nothing here names a winner in advance. The only inputs that are not measured
are the transports' capabilities (which browser API opens them, whether the
client can talk back on the same connection), listed in CAPABILITIES and
printed in the report.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .loadgen import EXACT, QUANTILES
from .stats import MIN_RUNS, MIN_SAMPLES, Decision, Figure, decide, figure

__all__ = ["CAPABILITIES", "SLIP", "recommend", "summarize", "slip_reasons", "baseline_verdict",
           "NOTICEABLE_MS", "TIE", "figures", "cell_figures", "by_cell", "OUTCOMES", "proxy_outcome", "fix_for",
           "cut_by"]

CAPABILITIES = {
    "sse_post": {"browser_api": "fetch + ReadableStream", "browser_resumes": False, "talks_back": False},
    "sse_get": {"browser_api": "EventSource", "browser_resumes": True, "talks_back": False},
    "ndjson": {"browser_api": "fetch + ReadableStream", "browser_resumes": False, "talks_back": False},
    "ws": {"browser_api": "WebSocket", "browser_resumes": False, "talks_back": True},
    # OpenAI's Responses API (SSE with `event:` names, resumed by `starting_after`): what an SDK speaks.
    "responses": {"browser_api": "fetch + ReadableStream", "browser_resumes": False, "talks_back": False},
}
# A cell slips when one of these holds.
SLIP = {"itl_p99_factor": 2.0, "ttft_p95_extra_ms": 250.0, "failure_share": 0.01}
TIE = 0.10  # figures within 10% count as a tie (the machine is noisy)
NOTICEABLE_MS = 200.0  # a wait shorter than this is hardly noticed


def _saturated(cell: dict) -> bool:
    return bool(cell["load_generator"]["saturated"])


def _fig(cell: dict, metric: str, key: str):
    return (cell["locust"].get(metric) or {}).get(key)


def failures(cell: dict) -> dict:
    """A cell's failed streams, and gaps, duplicates and cut streams among them (the locustfile's
    `gap`/`duplicate` rows count seq ranges; `cut:` is the message of a stream that ended unresumed).
    `unanswered`: cut before any answer ("cut: no response"): the client got no stream id, so there was
    nothing to resume (it may send the request again); counted apart from the streams that failed to resume."""
    rows = cell["locust"]
    cuts = [(e.get("occurrences", 1), str(e.get("error", ""))) for e in cell.get("errors", [])
            if e.get("method") == cell["transport"] and "cut:" in str(e.get("error", ""))]
    unanswered = sum(n for n, msg in cuts if "cut: no response" in msg)
    cut = sum(n for n, _ in cuts) - unanswered
    failed = (rows.get("stream") or {}).get("failures", 0)
    return {"streams": (rows.get("stream") or {}).get("count", 0), "failed": failed,
            "gaps": (rows.get("gap") or {}).get("failures", 0),
            "duplicates": (rows.get("duplicate") or {}).get("failures", 0),
            "cut": cut, "unanswered": unanswered,
            "other": max(0, failed - cut - unanswered - (rows.get("gap") or {}).get("failures", 0)
                         - (rows.get("duplicate") or {}).get("failures", 0))}


def slip_reasons(cell: dict, matrix: dict) -> list[str]:
    reasons = []
    itl = _fig(cell, "inter_token", "p99")
    ttft = _fig(cell, "ttft", "p95")
    f = failures(cell)
    streams = f["streams"]
    if itl is not None and itl > SLIP["itl_p99_factor"] * matrix["itl_ms"]:
        reasons.append(f"inter-token p99 {itl:g} ms > {SLIP['itl_p99_factor']:g} x {matrix['itl_ms']:g} ms")
    if ttft is not None and ttft > matrix["ttft_ms"] + SLIP["ttft_p95_extra_ms"]:
        reasons.append(f"TTFT p95 {ttft:g} ms > {matrix['ttft_ms']:g} + {SLIP['ttft_p95_extra_ms']:g} ms")
    if not _fig(cell, "ttft", "count"):
        reasons.append("no stream delivered a token")
    elif streams and f["failed"] / streams > SLIP["failure_share"]:
        reasons.append(f"{f['failed']} of {streams} streams failed")
    return reasons


def by_cell(results: dict) -> dict[str, list[dict]]:
    """Each cell's runs, in matrix order."""
    out: dict[str, list[dict]] = {}
    for c in results["cells"]:
        out.setdefault(c["cell"], []).append(c)
    return out


def cell_figures(runs: list[dict]) -> dict[str, dict[str, Figure]]:
    """A cell's figures over its runs: exact percentiles of each metric, and the gateway's cost."""
    out: dict[str, dict[str, Figure]] = {}
    for metric, (_, of) in EXACT.items():
        samples = sum((r.get("exact") or {}).get(metric, {}).get("count", 0) for r in runs)
        figs = {}
        for q in (*QUANTILES, "mean"):
            key = f"p{q}" if q != "mean" else "mean"
            f = figure([((r.get("exact") or {}).get(metric) or {}).get(key) for r in runs], samples, of)
            if f is not None:
                figs[key] = f
        if figs:
            out[metric] = figs
    tokens = sum(r["gateway"]["tokens"] for r in runs)
    gw = {"cpu_us_per_token": figure([r["gateway"]["cpu_us_per_token"] for r in runs], tokens, "tokens"),
          "tokens_per_s": figure([r["gateway"]["tokens_per_s"] for r in runs], tokens, "tokens")}
    out["gateway"] = {k: f for k, f in gw.items() if f is not None}
    return out


def figures(results: dict) -> dict[str, dict]:
    """results.json's `figures`: every cell's figures over its runs, as plain data."""
    return {cid: {m: {k: f.as_dict() for k, f in figs.items()} for m, figs in cell_figures(runs).items()}
            for cid, runs in by_cell(results).items()}


def _pooled(runs: list[dict]) -> dict:
    """Counts over a cell's runs (failures as the Locust rows say, streams as the users recorded)."""
    f = {k: 0 for k in ("streams", "failed", "gaps", "duplicates", "cut", "unanswered", "other")}
    for r in runs:
        for k, v in failures(r).items():
            f[k] += v
    f["recorded"] = sum(r.get("streams", {}).get("recorded", 0) for r in runs)
    f["refused"] = sum(r.get("streams", {}).get("refused", 0) for r in runs)
    return f


def _low(f: Figure) -> float:
    """The low end of a figure's 95% interval (its value with one run)."""
    return f.value if math.isinf(f.lo) else f.lo


def _mean_cell(runs: list[dict]) -> dict:
    """A cell-shaped view of its runs, for the slip rule: a cell slips only when the low end of the 95%
    interval passes the limit, so that one noisy run on a shared machine does not make a slip."""
    figs = cell_figures(runs)
    first = runs[0]
    locust = {"ttft": {"count": sum(((r["locust"].get("ttft") or {}).get("count") or 0) for r in runs)}}
    if "ttft" in figs:
        locust["ttft"]["p95"] = round(_low(figs["ttft"]["p95"]), 1)
    if "itl" in figs:
        locust["inter_token"] = {"p99": round(_low(figs["itl"]["p99"]), 1)}
    f = _pooled(runs)
    locust["stream"] = {"count": f["streams"], "failures": f["failed"]}
    return {**first, "locust": locust, "errors": [e for r in runs for e in r.get("errors", [])],
            "load_generator": {**first["load_generator"],
                               "saturated": any(r["load_generator"]["saturated"] for r in runs)}}


def summarize(results: dict) -> dict[str, dict]:
    """Per transport: the figures the rules use (Figures over runs, and pooled counts)."""
    matrix = results["matrix"]
    cells = by_cell(results)
    out: dict[str, dict] = {}
    for t in matrix["transports"]:
        load = sorted((runs for runs in cells.values() if runs[0]["transport"] == t
                       and runs[0]["kind"] == "load" and runs[0]["path"] == "direct"), key=lambda r: r[0]["users"])
        views = [_mean_cell(runs) for runs in load]
        kept = [v for v in views if not slip_reasons(v, matrix)]
        held = kept[-1] if kept else None
        inconclusive = [v["users"] for v in views if slip_reasons(v, matrix) and _saturated(v)]
        above = [v for v in views if v["users"] > (held["users"] if held else 0) and slip_reasons(v, matrix)
                 and not _saturated(v)]
        # Reconnection cells, one per way of cutting (the user, the gateway, a proxy): the stall figure is
        # the first's, cleanliness is every one's.
        recs = [runs for runs in cells.values() if runs[0]["transport"] == t and runs[0]["kind"] == "reconnect"]
        rec = recs[0] if recs else None
        proxied = [runs for runs in cells.values() if runs[0]["transport"] == t and runs[0]["kind"] == "load"
                   and runs[0]["path"] != "direct"]
        low = cell_figures(load[0]) if load else {}
        top = cell_figures(load[-1]) if load else {}
        rec_figs = cell_figures(rec) if rec else {}
        out[t] = {
            "ttft_p95_low": low.get("ttft", {}).get("p95"),
            "itl_p99_low": low.get("itl", {}).get("p99"),
            "low_users": load[0][0]["users"] if load else None,
            "held_users": held["users"] if held else 0,
            "slipped_at": above[0]["users"] if above else None,
            "slip_reasons": slip_reasons(above[0], matrix) if above else [],
            # Per token at the highest concurrency, the same level for every transport (fixed costs such
            # as the shared sweep and /metrics scrapes weigh more at low load).
            "cpu_us_per_token": top.get("gateway", {}).get("cpu_us_per_token"),
            "cpu_users": load[-1][0]["users"] if load else None,
            "resume_p95": rec_figs.get("resume", {}).get("p95"),
            "resume_by": cut_by(rec[0], matrix) if rec else None,
            "reconnect_saturated": any(_saturated(r) for runs in recs for r in runs),
            "reconnect_failures": _pooled([r for runs in recs for r in runs]) if recs else None,
            "drops": {cut_by(runs[0], matrix): {"resume_p95": cell_figures(runs).get("resume", {}).get("p95"),
                                               "failures": _pooled(runs)} for runs in recs},
            "resumes": sum(r["gateway"]["resumes"] for runs in recs for r in runs) if recs else None,
            "wasted_tokens": sum(r["gateway"].get("wasted_tokens", 0) for runs in recs for r in runs) if recs else None,
            "inconclusive_users": inconclusive,
            "proxy_paths": {runs[0]["path"]: proxy_outcome(runs, next(
                (x for x in load if x[0]["users"] == runs[0]["users"]), None), matrix) for runs in proxied},
            "saturated": any(_saturated(v) for v in views),
        }
    return out


def cut_by(cell: dict, matrix: dict) -> str:
    """Who cut a reconnection cell's streams: "client", "server" or "proxy" (older results: the matrix's)."""
    if cell.get("cut_by"):
        return cell["cut_by"]
    by = matrix.get("drop_by", "server")
    return by if isinstance(by, str) else by[0]


# Proxy outcomes, worst first. "not measured" is not an outcome: nothing ran.
OUTCOMES = ("refused", "held until the end", "delayed", "clean")


def proxy_outcome(runs: list[dict], direct: list[dict] | None, matrix: dict) -> dict:
    """What the proxy did to this transport's streams, with the evidence and the fix."""
    f = _pooled(runs)
    figs = cell_figures(runs)
    base = cell_figures(direct) if direct else {}
    path, transport = runs[0]["path"], runs[0]["transport"]
    ttft, e2e = figs.get("ttft", {}).get("p50"), figs.get("e2e", {}).get("p50")
    itl = figs.get("itl", {}).get("p50")
    ttft0 = base.get("ttft", {}).get("p50")
    reasons = []
    if f["recorded"] == 0 and f["streams"] == 0:
        outcome = "not measured"
        reasons.append(f"no stream ended within the {runs[0]['duration_s']:g} s cell")
    elif f["refused"] and f["refused"] >= 0.01 * max(1, f["recorded"]):
        outcome = "refused"
        why = next((m for r in runs for m in r.get("streams", {}).get("failures", []) if m.startswith("refused")), "")
        reasons.append(f"{f['refused']} of {f['recorded']} streams refused ({why.removeprefix('refused: ')})")
    elif ttft is None:
        outcome = "refused"
        reasons.append(f"no token arrived ({f['failed']} of {f['streams']} streams failed)")
    elif e2e is not None and ttft.value >= 0.8 * e2e.value and matrix["max_tokens"] > 2:
        outcome = "held until the end"
        reasons.append(f"first token at {ttft.value:.0f} ms of a {e2e.value:.0f} ms stream (p50): "
                       "the answer came in one piece")
    else:
        outcome = "clean"
        if ttft0 is not None and ttft.value > ttft0.value + max(50.0, 0.5 * ttft0.value):
            outcome = "delayed"
            reasons.append(f"TTFT p50 {ttft.value:.0f} ms vs {ttft0.value:.0f} ms direct")
        if itl is not None and itl.value < 0.5 * matrix["itl_ms"]:
            outcome = "delayed"
            reasons.append(f"inter-token p50 {itl.value:.1f} ms < half the {matrix['itl_ms']:g} ms sent: bunched")
    return {"outcome": outcome, "reasons": reasons, "ttft_p50": ttft.value if ttft else None,
            "fix": fix_for(path, transport, outcome), "buffered": outcome not in ("clean", "not measured")}


def fix_for(path: str, transport: str, outcome: str) -> str:
    """The config lines that fix it, taken from the lab's tuned config (those the path's own lacks)."""
    if outcome in ("clean", "not measured"):
        return ""
    try:
        from .. import lab as lab_mod
    except Exception:  # the lab is part of this checkout; without it there is no fix to quote
        return ""
    known = {p.name: p for p in lab_mod.PROXIES}
    proxy = known.get(path)
    if proxy is None or proxy.tool not in ("nginx", "haproxy"):
        return ""
    tuned = lab_mod.LAB_DIR / ("nginx/tuned.conf" if proxy.tool == "nginx" else "haproxy/tuned.cfg")

    def lines(p) -> list[str]:
        try:
            text = p.read_text()
        except OSError:
            return []
        return [ln.split("#")[0].strip() for ln in text.splitlines() if ln.split("#")[0].strip()]

    own = set(lines(lab_mod.LAB_DIR / proxy.config))
    missing = [ln for ln in lines(tuned) if ln not in own and ln not in ("{", "}")]
    wanted = {"refused": ("Upgrade", "Connection", "http_version", "map ", "default upgrade", "close;"),
              "held until the end": ("buffering", "http_version", "gzip", "http-no-delay", "cache"),
              "delayed": ("buffering", "http_version", "gzip", "http-no-delay", "cache")}[outcome]
    chosen = [ln for ln in missing if any(w in ln for w in wanted)]
    if outcome != "refused" and proxy.tool == "nginx" and transport != "ws":
        chosen.append("(or from the app: X-Accel-Buffering: no, GATEWAY_X_ACCEL_BUFFERING=true)")
    where = f"lab/{tuned.relative_to(lab_mod.LAB_DIR)}"
    return f"{where}: " + " ".join(chosen) if chosen else ""


def _ci(f: Figure | None, unit: str = " ms") -> str:
    if f is None:
        return "–"
    if f.lo == float("-inf"):
        return f"{f.value:.1f}{unit} (1 run)"
    return f"{f.value:.1f}{unit} [{f.lo:.1f}–{f.hi:.1f}]"


def _evidence(cands: dict[str, Figure | None], unit: str = " ms") -> str:
    fs = {t: f for t, f in cands.items() if f is not None}
    if not fs:
        return ""
    any_f = next(iter(fs.values()))
    parts = [f"{t} {_ci(f, unit)}" for t, f in sorted(fs.items(), key=lambda kv: kv[1].value)]
    n = ", ".join(f"{t} {f.samples}" for t, f in fs.items())
    runs = {len(f.runs) for f in fs.values()}
    runs_text = (f"{runs.pop()} runs" if len(runs) == 1
                 else "runs: " + ", ".join(f"{t} {len(f.runs)}" for t, f in fs.items()))
    return f"{', '.join(parts)} (mean of the runs, 95% t interval; {runs_text}; {any_f.of}: {n})"


def _verdict(dec: Decision, evidence: str, nothing: str) -> tuple[str | None, str, str]:
    if not dec.order:
        if dec.unjudged:
            return None, "not measured", (f"{', '.join(dec.unjudged)} not judged: fewer than {MIN_SAMPLES} samples "
                                          f"or {MIN_RUNS} runs; " + evidence)
        return None, "not measured", nothing
    why = evidence
    if dec.unjudged:
        why += f"; {', '.join(dec.unjudged)} not judged: fewer than {MIN_SAMPLES} samples or {MIN_RUNS} runs"
    return dec.winner, dec.label, why


def _browser(s: dict[str, dict]):
    cands = {t: v["ttft_p95_low"] for t, v in s.items()}
    return _verdict(decide(cands), "TTFT p95: " + _evidence(cands), "no load cell delivered tokens")


def _bidirectional(s: dict[str, dict]):
    able = [t for t in s if CAPABILITIES[t]["talks_back"]]
    others = [t for t in s if t not in able]
    if not able:
        return None, "not measured", "no measured transport has a client-to-server channel (add ws to --transports)"
    cands = {t: s[t]["itl_p99_low"] for t in able}
    winner, label, why = _verdict(decide(cands), "inter-token p99: " + _evidence(cands), "ws delivered no tokens")
    if others:
        why += f"; {', '.join(others)} cannot talk back on the stream's connection"
    return winner, label, why


def _proxies(s: dict[str, dict]):
    measured = {t: {p: o for p, o in v["proxy_paths"].items() if o["outcome"] != "not measured"}
                for t, v in s.items()}
    measured = {t: paths for t, paths in measured.items() if paths}
    if not measured:
        return None, "not measured", "no proxy path ran (see the notes)"
    rank = {t: sorted(OUTCOMES.index(o["outcome"]) for o in paths.values()) for t, paths in measured.items()}
    best = max(rank.values())
    top = sorted(t for t, r in rank.items() if r == best)
    findings = "; ".join(f"{t} via {p}: {o['outcome']}" for t, paths in sorted(measured.items())
                         for p, o in sorted(paths.items()) if o["outcome"] != "clean") or "every stream arrived clean"
    why = f"worst outcome per transport first ({' < '.join(OUTCOMES)}): {findings}"
    if len(top) > 1:
        return None, "tie: " + ", ".join(top), why
    return top[0], top[0], why


def _clean(v: dict) -> bool:
    f = v["reconnect_failures"]
    return (f is not None and v["resume_p95"] is not None and f["gaps"] == 0 and f["duplicates"] == 0
            and f["cut"] == 0 and f["other"] == 0)


def _resume(s: dict[str, dict], drop_rate: float):
    if drop_rate <= 0:
        return None, "not measured", "--drop-rate 0: no stream was cut, so nothing resumed"
    dirty = [t for t, v in s.items() if v["reconnect_failures"] is not None and not _clean(v)]
    cands = {t: v["resume_p95"] for t, v in s.items() if _clean(v)}
    by = sorted({v["resume_by"] for v in s.values() if v["resume_by"]})
    winner, label, why = _verdict(decide(cands), f"resume stall p95 (cut by the {'/'.join(by)}; last token "
                                  "before the cut to the next new one): " + _evidence(cands),
                                  "no transport resumed cleanly")
    if dirty:
        why += f"; {', '.join(dirty)} left gaps, duplicates or cut streams ({_losses(s, dirty)})"
    unanswered = {t: v["reconnect_failures"]["unanswered"] for t, v in s.items()
                  if v["reconnect_failures"] is not None and v["reconnect_failures"]["unanswered"]}
    if unanswered:
        why += ("; cut before any answer, with no stream id to resume (not judged here: the client may send "
                "the request again): " + ", ".join(f"{t} {n}" for t, n in unanswered.items()))
    return winner, label, why


def _losses(s: dict[str, dict], transports: list[str]) -> str:
    """What each transport lost, per way of cutting: "sse_post cut by the proxy: 10 cut streams"."""
    parts = []
    for t in transports:
        for by, d in s[t].get("drops", {}).items():
            f = d["failures"]
            lost = [f"{f[k]} {name}" for k, name in (("gaps", "gaps"), ("duplicates", "duplicates"),
                                                     ("cut", "cut streams"), ("other", "other failures")) if f[k]]
            if lost:
                parts.append(f"{t} cut by the {by}: {', '.join(lost)}")
    return "; ".join(parts) or "see the reconnection table"


def _mobile(s: dict[str, dict]):
    return None, "not measured", ("needs real network profiles (lab/links.py: loss, stalls, resets); "
                                  "loopback says nothing about mobile networks")


def _throughput(s: dict[str, dict]):
    held = {t: v["held_users"] for t, v in s.items()}
    if not held or max(held.values()) == 0:
        return None, "not measured", "every transport slipped at the lowest concurrency"
    top = max(held.values())
    tied = {t: s[t]["cpu_us_per_token"] for t, v in held.items() if v == top}
    why = "streams held without slipping: " + ", ".join(f"{t} {n}" for t, n in sorted(held.items(), key=lambda kv: -kv[1]))
    unsure = [f"{t} at {', '.join(map(str, v['inconclusive_users']))}" for t, v in s.items() if v["inconclusive_users"]]
    if unsure:
        why += f"; not judged (load generator saturated): {'; '.join(unsure)}"
    # A transport whose slip could be the load generator's might have held as many: no winner over it.
    unjudged = [t for t, v in s.items() if v["inconclusive_users"] and v["held_users"] < top]
    if unjudged:
        return None, "not measured", why + f"; {', '.join(unjudged)} could not be judged up to {top} streams"
    if len(tied) == 1:
        return next(iter(tied)), next(iter(tied)), why
    cpu_at = "/".join(map(str, sorted({s[t]["cpu_users"] for t in tied})))
    winner, label, ev = _verdict(decide(tied), f"gateway CPU per token at {cpu_at} streams: "
                                 + _evidence(tied, " us"), "no CPU figure")
    return winner, label, why + "; " + ev


RULES: list[tuple[str, str, Callable]] = [
    ("browser client", "Lowest TTFT p95 at the lowest concurrency; a winner only when its 95% interval "
     "clears the runner-up's and it is 10% better, else a tie.", _browser),
    ("bidirectional control", "Only a transport that carries client messages on the stream's own connection "
     "qualifies (cancel, tool results); among those, lowest inter-token p99 (as above).", _bidirectional),
    ("strict proxies", "Each proxy path's outcome, worst first: refused (upgrade denied, 4xx/5xx) < held until "
     "the end (first token at 80% or more of the stream) < delayed (TTFT p50 over direct's + max(50 ms, 50%), "
     "or tokens bunched) < clean; the transport whose worst outcomes are best wins, equal ones tie.", _proxies),
    ("resumability", "No gaps, duplicates or cut streams in any reconnection cell (whoever cut: the user, the "
     "gateway, a proxy; a request cut before any answer has nothing to resume and is listed apart); then lowest "
     "resume stall p95 of the first, as a user sees it (the client's own reconnect wait included), as above.",
     None),
    ("mobile networks", "Not judged on loopback: needs the lab's network profiles.", _mobile),
    ("highest throughput", "Most concurrent streams held without slipping (inter-token p99 over 2x the gap, "
     "TTFT p95 over the model's + 250 ms, each by the low end of its 95% interval, or over 1% failures); ties: "
     "least gateway CPU per token at the highest concurrency (as above).", _throughput),
]


def baseline_verdict(rows: list[dict], itl_ms: float) -> dict:
    """Below which answer length streaming stops paying off: the first words come less than
    NOTICEABLE_MS before the whole answer would."""
    pays = [r["tokens"] for r in rows if r["gain_ms"] >= NOTICEABLE_MS]
    short = [r["tokens"] for r in rows if r["gain_ms"] < NOTICEABLE_MS]
    # Least-squares slope of the whole-answer time against length: ms per token.
    n = len(rows)
    slope = None
    if n >= 2:
        mx = sum(r["tokens"] for r in rows) / n
        my = sum(r["complete_ms"] for r in rows) / n
        den = sum((r["tokens"] - mx) ** 2 for r in rows)
        if den:
            slope = sum((r["tokens"] - mx) * (r["complete_ms"] - my) for r in rows) / den
    return {
        "rule": f"Streaming pays off when the first words come at least {NOTICEABLE_MS:g} ms before the whole "
                "answer would (a shorter wait is hardly noticed).",
        "streaming_pays_from": min(pays) if pays else None,
        "not_worth_below": max(short) if short else None,
        "ms_per_token": round(slope, 2) if slope else None,
        "break_even_tokens": round(NOTICEABLE_MS / slope) if slope and slope > 0 else None,
        "itl_ms": itl_ms,
    }


def recommend(results: dict) -> dict:
    s = summarize(results)
    table = []
    for need, rule, fn in RULES:
        if need == "resumability":
            winner, verdict, why = _resume(s, results["matrix"].get("drop_rate", 1.0))
        else:
            winner, verdict, why = fn(s)
        table.append({"need": need, "winner": winner, "verdict": verdict, "rule": rule, "why": why})
    if results.get("networks"):
        table = with_networks(table, results["networks"])
    return {"table": table, "summary": _plain(s),
            "baseline": baseline_verdict(results.get("baseline", []), results["matrix"]["itl_ms"])}


def with_networks(table: list[dict], measured: dict) -> list[dict]:
    """The verdict rows a networks run decides (loadtests/networks.py: mobile networks, strict proxies,
    many tabs, dead connections) in place of loopback's, the new ones after them."""
    from ..networks import verdicts

    rows = {r["need"]: r for r in verdicts(measured)}
    for r in table:
        if r["need"] in rows and r["need"] == "strict proxies" and r["verdict"] != "not measured":
            # Both measured: the comparison's proxy paths under load, and the lab's strict paths.
            rows[r["need"]]["why"] = f"{r['why']}; lab paths: {rows[r['need']]['why']}"
    out = [rows.pop(r["need"], r) for r in table]
    return out + list(rows.values())


def _plain(value):
    """The summary as JSON-ready data (Figures as dicts)."""
    if isinstance(value, Figure):
        return value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
