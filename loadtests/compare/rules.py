"""From measured numbers to verdicts: each need has a stated rule, and the rule picks the winner.

Nothing here names a winner in advance. The only inputs that are not measured
are the transports' capabilities (which browser API opens them, whether the
client can talk back on the same connection), listed in CAPABILITIES and
printed in the report.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["CAPABILITIES", "SLIP", "recommend", "summarize", "slip_reasons", "baseline_verdict",
           "NOTICEABLE_MS", "TIE"]

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
    `gap`/`duplicate` rows count seq ranges; `cut:` is the message of a stream that ended unresumed)."""
    rows = cell["locust"]
    cut = sum(e.get("occurrences", 1) for e in cell.get("errors", [])
              if e.get("method") == cell["transport"] and "cut:" in str(e.get("error", "")))
    failed = (rows.get("stream") or {}).get("failures", 0)
    return {"streams": (rows.get("stream") or {}).get("count", 0), "failed": failed,
            "gaps": (rows.get("gap") or {}).get("failures", 0),
            "duplicates": (rows.get("duplicate") or {}).get("failures", 0),
            "cut": cut, "other": max(0, failed - cut - (rows.get("gap") or {}).get("failures", 0)
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


def summarize(results: dict) -> dict[str, dict]:
    """Per transport: the figures the rules use."""
    matrix = results["matrix"]
    out: dict[str, dict] = {}
    wire = {w["transport"]: w for w in results.get("wire", [])}
    memory = {m["transport"]: m for m in results.get("memory", [])}
    for t in matrix["transports"]:
        load = sorted((c for c in results["cells"] if c["transport"] == t and c["kind"] == "load"
                       and c["path"] == "direct"), key=lambda c: c["users"])
        # Held: the most streams that kept pace. A slip below that level is noise (a machine that kept
        # pace with more streams can with fewer), so it does not lower the figure.
        # A slip where the load generator itself was saturated proves nothing about the transport.
        kept = [c for c in load if not slip_reasons(c, matrix)]
        held = kept[-1] if kept else None
        inconclusive = [c["users"] for c in load if slip_reasons(c, matrix) and _saturated(c)]
        above = [c for c in load if c["users"] > (held["users"] if held else 0) and slip_reasons(c, matrix)
                 and not _saturated(c)]
        slipped_at = above[0]["users"] if above else None
        why = slip_reasons(above[0], matrix) if above else []
        low = load[0] if load else None
        rec = next((c for c in results["cells"] if c["transport"] == t and c["kind"] == "reconnect"), None)
        proxied = [c for c in results["cells"] if c["transport"] == t and c["path"] != "direct"]
        out[t] = {
            "ttft_p95_low": _fig(low, "ttft", "p95") if low else None,
            "itl_p99_low": _fig(low, "inter_token", "p99") if low else None,
            "low_users": low["users"] if low else None,
            "held_users": held["users"] if held else 0,
            "slipped_at": slipped_at,
            "slip_reasons": why,
            # Per token at the highest concurrency, the same level for every transport (fixed costs such
            # as the shared sweep and /metrics scrapes weigh more at low load).
            "cpu_us_per_token": load[-1]["gateway"]["cpu_us_per_token"] if load else None,
            "cpu_users": load[-1]["users"] if load else None,
            "reconnect_p95": _fig(rec, "reconnect", "p95") if rec and not _saturated(rec) else None,
            "reconnect_saturated": bool(rec and _saturated(rec)),
            "reconnects": _fig(rec, "reconnect", "count") or 0 if rec else 0,
            "inconclusive_users": inconclusive,
            "reconnect_failures": failures(rec) if rec else None,
            "resumed": rec["gateway"]["resumes"] if rec else None,
            "wire_bytes_per_token": (wire.get(t) or {}).get("wire_bytes_per_token"),
            "bytes_per_connection": (memory.get(t) or {}).get("bytes_per_connection"),
            "proxy_paths": {c["path"]: _proxy_ok(c, load, matrix) for c in proxied},
            "saturated": any(c["load_generator"]["saturated"] for c in load),
        }
    return out


def _proxy_ok(cell: dict, direct: list[dict], matrix: dict) -> dict:
    """Through a proxy, a stream is buffered when its first token comes late or its tokens come bunched."""
    same = next((c for c in direct if c["users"] == cell["users"]), None)
    ttft, base = _fig(cell, "ttft", "p50"), _fig(same, "ttft", "p50") if same else None
    itl50 = _fig(cell, "inter_token", "p50")
    reasons = []
    if ttft is None:
        f = failures(cell)
        top = max(cell.get("errors", []), key=lambda e: e.get("occurrences", 0), default=None)
        message = str(top["error"]) if top else ""
        message = message.split("('", 1)[-1].rstrip("')") if "('" in message else message
        if f["streams"]:
            reasons.append(f"no token arrived ({f['failed']} of {f['streams']} streams failed"
                           + (f": {message}" if message else "") + ")")
        else:
            reasons.append(f"no token arrived and no stream ended within the {cell['duration_s']:g} s cell")
    elif base is not None and ttft > base + max(50.0, 0.5 * base):
        reasons.append(f"TTFT p50 {ttft:g} ms vs {base:g} ms direct")
    if itl50 is not None and itl50 < 0.5 * matrix["itl_ms"]:
        reasons.append(f"inter-token p50 {itl50:g} ms < half the {matrix['itl_ms']:g} ms sent: bunched")
    return {"buffered": bool(reasons), "reasons": reasons, "ttft_p50": ttft}


def _best(cands: dict[str, float], lower: bool = True) -> tuple[str, list[str]]:
    """The best transport, and all those within TIE of it."""
    order = sorted(cands, key=lambda t: cands[t] if lower else -cands[t])
    best = order[0]
    ties = [t for t in order if abs(cands[t] - cands[best]) <= TIE * max(abs(cands[best]), 1e-9)]
    return best, ties


def _fmt(cands: dict, unit: str) -> str:
    return ", ".join(f"{t} {v:g}{unit}" for t, v in sorted(cands.items(), key=lambda kv: kv[1]))


def _clean(s: dict) -> bool:
    """Resumed cleanly: the reconnection cell ran, streams resumed, and nothing was lost or repeated
    (correctness: it holds even where the load generator was too busy to time the resumes)."""
    f = s["reconnect_failures"]
    return f is not None and s["reconnects"] > 0 and f["gaps"] == 0 and f["duplicates"] == 0 and f["cut"] == 0 and f["other"] == 0


def _browser(s: dict[str, dict]) -> tuple[str | None, str]:
    cands = {t: v["ttft_p95_low"] for t, v in s.items() if v["ttft_p95_low"] is not None}
    if not cands:
        return None, "no load cell delivered tokens"
    best, ties = _best(cands)
    resumes = [t for t in ties if CAPABILITIES[t]["browser_resumes"]]
    winner = resumes[0] if resumes and resumes[0] != best else best
    why = f"TTFT p95: {_fmt(cands, ' ms')}"
    if winner != best:
        why += f"; {winner} is within {TIE:.0%} of {best} and the browser resumes it by itself"
    return winner, why


def _bidirectional(s: dict[str, dict]) -> tuple[str | None, str]:
    cands = {t: v["itl_p99_low"] for t, v in s.items() if CAPABILITIES[t]["talks_back"]
             and v["itl_p99_low"] is not None}
    if not cands:
        return None, "no measured transport has a client-to-server channel (add ws to --transports)"
    best, _ = _best(cands)
    others = [t for t in s if t not in cands]
    return best, (f"inter-token p99: {_fmt(cands, ' ms')}; "
                  + (f"{', '.join(others)} cannot talk back on the stream's connection" if others else ""))


def _proxies(s: dict[str, dict]) -> tuple[str | None, str]:
    measured = {t: v["proxy_paths"] for t, v in s.items() if v["proxy_paths"]}
    if not measured:
        return None, "not measured: no proxy path ran (see the notes)"
    share = {t: sum(not p["buffered"] for p in paths.values()) / len(paths) for t, paths in measured.items()}
    top = max(share.values())
    if top == 0:
        return None, ("no transport arrived unbuffered through any measured path: "
                      + ", ".join(sorted({p for paths in measured.values() for p in paths})))
    tied = {t: s[t]["ttft_p95_low"] or 0.0 for t, v in share.items() if v == top}
    best, _ = _best(tied)
    return best, "unbuffered paths: " + ", ".join(f"{t} {share[t]:.0%}" for t in sorted(share, key=lambda t: -share[t]))


def _resume(s: dict[str, dict]) -> tuple[str | None, str]:
    clean = {t: v["reconnect_p95"] for t, v in s.items() if _clean(v) and v["reconnect_p95"] is not None}
    if not clean and any(_clean(v) for v in s.values()):
        return None, "resumed cleanly, but no reconnection cell could be timed" + unsure_note
    dirty = [t for t, v in s.items() if v["reconnect_failures"] is not None and not _clean(v)
             and not v["reconnect_saturated"]]
    unsure = [t for t, v in s.items() if v["reconnect_saturated"]]
    unsure_note = (f"; {', '.join(unsure)} not judged: the load generator was saturated in its reconnection cell"
                   if unsure else "")
    if not clean:
        return None, ("no transport resumed cleanly" + (f" ({', '.join(dirty)} had gaps, duplicates or cuts)"
                                                         if dirty else "") + unsure_note)
    best, ties = _best(clean)
    auto = [t for t in ties if CAPABILITIES[t]["browser_resumes"]]
    winner = auto[0] if auto else best
    why = f"reconnect p95: {_fmt(clean, ' ms')}"
    if winner != best:
        why += f"; {winner} is within {TIE:.0%} and the browser resumes it by itself"
    if dirty:
        why += f"; {', '.join(dirty)} left gaps, duplicates or cut streams"
    return winner, why + unsure_note


def _mobile(s: dict[str, dict]) -> tuple[str | None, str]:
    cands = {t: v["wire_bytes_per_token"] for t, v in s.items() if _clean(v) and v["wire_bytes_per_token"]}
    if not cands:
        return None, "no transport both resumed cleanly and had its bytes measured"
    best, ties = _best(cands)
    if len(ties) > 1:
        rec = {t: s[t]["reconnect_p95"] for t in ties}
        best, _ = _best(rec)
        return best, f"wire bytes/token: {_fmt(cands, '')}; tie broken by reconnect p95: {_fmt(rec, ' ms')}"
    return best, f"wire bytes/token (of those that resume cleanly): {_fmt(cands, '')}"


def _throughput(s: dict[str, dict]) -> tuple[str | None, str]:
    held = {t: v["held_users"] for t, v in s.items()}
    if not held or max(held.values()) == 0:
        return None, "every transport slipped at the lowest concurrency"
    top = max(held.values())
    tied = {t: s[t]["cpu_us_per_token"] for t, v in held.items() if v == top and s[t]["cpu_us_per_token"]}
    cpu_at = {s[t]["cpu_users"] for t in tied}
    best, _ = _best(tied) if tied else (max(held, key=held.get), [])
    why = "streams held without slipping: " + ", ".join(f"{t} {n}" for t, n in sorted(held.items(), key=lambda kv: -kv[1]))
    if len(tied) > 1:
        why += f"; gateway CPU per token at {'/'.join(map(str, sorted(cpu_at)))} streams: {_fmt(tied, ' us')}"
    unsure = [f"{t} at {', '.join(map(str, v['inconclusive_users']))}" for t, v in s.items() if v["inconclusive_users"]]
    if unsure:
        why += f"; not judged (load generator saturated): {'; '.join(unsure)}"
    return best, why


RULES: list[tuple[str, str, Callable]] = [
    ("browser client", "Lowest TTFT p95 at the lowest concurrency; within 10% of it, the transport the browser "
     "resumes by itself (EventSource) wins.", _browser),
    ("bidirectional control", "Only a transport that carries client messages on the stream's own connection "
     "qualifies (cancel, tool results); among those, lowest inter-token p99.", _bidirectional),
    ("strict proxies", "Highest share of proxy paths where the stream arrived unbuffered (TTFT p50 within "
     "max(50 ms, 50%) of direct, inter-token p50 at least half the gap sent); ties: lowest TTFT p95.", _proxies),
    ("resumability", "No gaps, duplicates or cut streams in the reconnection cell; then lowest reconnect p95 "
     "(drop to next event); within 10%, the transport the browser resumes by itself.", _resume),
    ("mobile networks", "Must resume cleanly (as above); then fewest bytes on the wire per token "
     "(metered, slow links); within 10%, lowest reconnect p95.", _mobile),
    ("highest throughput", "Most concurrent streams held without slipping (inter-token p99 over 2x the gap, "
     "TTFT p95 over the model's + 250 ms, or over 1% failures); ties: least gateway CPU per token at the highest "
     "concurrency.", _throughput),
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
        winner, why = fn(s)
        table.append({"need": need, "winner": winner, "rule": rule, "why": why})
    return {"table": table, "summary": s,
            "baseline": baseline_verdict(results.get("baseline", []), results["matrix"]["itl_ms"])}
