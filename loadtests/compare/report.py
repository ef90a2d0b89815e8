"""The report folder: index.html (tables and inline plots), summary.md (the same tables), raw data.

Every table is built once, as rows of already-formatted strings, and rendered
to both markdown and HTML, so the two cannot disagree with each other or
with raw/results.json.
"""

from __future__ import annotations

import csv
import html
from dataclasses import dataclass, field
from pathlib import Path

from . import plots
from .rules import CAPABILITIES, NOTICEABLE_MS, OUTCOMES, SLIP, _mean_cell, _pooled, by_cell, cut_by, slip_reasons
from .stats import MIN_SAMPLES

__all__ = ["write", "fmt", "ci", "Table", "build"]


def fmt(value, digits: int = 1) -> str:
    """A figure as printed: None is a dash, whole numbers have no decimals."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    value = round(float(value), digits)
    return f"{value:.{digits}f}".rstrip("0").rstrip(".") if digits else f"{value:.0f}"


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""
    id: str = ""

    def markdown(self) -> str:
        def cell(s: str) -> str:
            return s.replace("|", "\\|").replace("\n", " ")
        lines = [f"### {self.title}", ""]
        if self.note:
            lines += [self.note, ""]
        lines.append("| " + " | ".join(self.headers) + " |")
        lines.append("|" + "|".join("---" for _ in self.headers) + "|")
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def html(self, classes: list[list[str]] | None = None) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = []
        for i, row in enumerate(self.rows):
            cls = classes[i] if classes else [""] * len(row)
            tds = "".join(f'<td class="{c}">{html.escape(v)}</td>' if c else f"<td>{html.escape(v)}</td>"
                          for v, c in zip(row, cls))
            body.append(f"<tr>{tds}</tr>")
        note = f'<p class="note">{html.escape(self.note)}</p>' if self.note else ""
        return (f'<h3 id="{self.id}">{html.escape(self.title)}</h3>{note}<div class="scroll"><table>'
                f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")


def _label(cell: dict) -> str:
    return cell["transport"] if cell["path"] == "direct" else f"{cell['transport']}@{cell['path']}"


def ci(f: dict | None, digits: int = 1) -> str:
    """A figure with its 95% interval, as printed: `61.2 [58–64.4]`."""
    if not f:
        return "–"
    if f.get("lo") is None:
        return fmt(f["value"], digits)
    return f"{fmt(f['value'], digits)} [{fmt(f['lo'], digits)}–{fmt(f['hi'], digits)}]"


def spread(f: dict | None, digits: int = 1) -> str:
    """The per-run values: the run-to-run spread."""
    return "–" if not f else " / ".join(fmt(v, digits) for v in f["runs"])


METRIC_NAMES = {"ttft": "TTFT", "tpot": "TPOT", "itl": "ITL (inter-token)", "e2e": "E2E latency",
                "chunk": "inter-chunk"}


def first_run(results: dict) -> list[dict]:
    return [c for c in results["cells"] if c.get("run", 0) == 0]


def build(results: dict) -> dict:
    """All tables, keyed by section, from results.json."""
    m = results["matrix"]
    rec = results["recommendations"]
    s = rec["summary"]
    figs = results.get("figures", {})
    cells = by_cell(results)
    runs = m.get("runs", 1)
    t: dict[str, Table] = {}

    t["verdicts"] = Table("Which transport for which need", ["need", "verdict", "measured", "rule"], id="verdicts",
                          note=f"Figures: mean of {runs} runs with its 95% interval (Student's t over the runs) "
                               f"[low–high]. A winner only when its interval clears the runner-up's and it is "
                               f"10% better; otherwise a tie naming both. Figures from fewer than {MIN_SAMPLES} "
                               "samples in a cell are shown but not judged.")
    for r in rec["table"]:
        t["verdicts"].rows.append([r["need"], r.get("verdict") or r["winner"] or "none", r["why"], r["rule"]])

    lat = Table("Latency per cell (ms): exact percentiles, vLLM benchmark_serving's definitions",
                ["transport", "path", "concurrent", "metric", "samples", "p50", "p90", "p95", "p99", "p95 per run"],
                note=(f"Each figure: mean over {runs} runs [95% interval]; samples: all runs together. TTFT: request "
                      "start to the first token; TPOT: (E2E - TTFT) / (tokens - 1) per stream; ITL: every gap between "
                      "tokens; E2E: request start to the last event; inter-chunk: every gap between reads that "
                      "brought tokens. Per-stream raw data: raw/<cell>-r<run>_streams.jsonl."), id="latency")
    load = Table("Throughput and lateness against concurrency",
                 ["transport", "path", "concurrent", "tokens/s", "TTFT p50 - model", "ITL p99 - gap",
                  "gateway CPU", "Locust CPU", "verdict"],
                 note=(f"Model: first token after {fmt(m['ttft_ms'])} ms, a token every {fmt(m['itl_ms'])} ms "
                       f"({fmt(m['token_rate'])} tokens/s per stream). A cell slips when ITL p99 > "
                       f"{SLIP['itl_p99_factor']:g} x the gap, TTFT p95 > the model's + {SLIP['ttft_p95_extra_ms']:g}"
                       f" ms (each by the low end of its 95% interval), or failures > {SLIP['failure_share']:.0%} of streams."), id="load")
    for cid, cr in cells.items():
        c = cr[0]
        if c["kind"] != "load":
            continue
        f = figs.get(cid, {})
        for metric, name in METRIC_NAMES.items():
            mf = f.get(metric)
            if not mf:
                continue
            lat.rows.append([c["transport"], c["path"], fmt(c["users"]), name,
                             f"{mf['p50']['samples']} {mf['p50']['of']}",
                             ci(mf.get("p50")), ci(mf.get("p90")), ci(mf.get("p95")), ci(mf.get("p99")),
                             spread(mf.get("p95"))])
        if c["path"] != "direct":
            continue
        view = _mean_cell(cr)
        reasons = slip_reasons(view, m)
        verdict = ("slips: " + "; ".join(reasons)) if reasons else "keeps pace"
        if view["load_generator"]["saturated"] and reasons:
            verdict = "not judged, load generator saturated: " + "; ".join(reasons)
        ttft, itl = f.get("ttft", {}).get("p50"), f.get("itl", {}).get("p99")
        g = f.get("gateway", {})
        gw_peak = [r["gateway"]["cpu_share_peak"] for r in cr if r["gateway"]["cpu_share_peak"] is not None]
        load.rows.append([
            c["transport"], c["path"], fmt(c["users"]), ci(g.get("tokens_per_s")),
            fmt(None if ttft is None else ttft["value"] - m["ttft_ms"]),
            fmt(None if itl is None else itl["value"] - m["itl_ms"]),
            f"{max(gw_peak):.0%} peak" if gw_peak else "–",
            f"{max(r['load_generator']['cpu_share_peak'] for r in cr):.0%} peak", verdict])
    t["latency"], t["load"] = lat, load

    drop_by = m.get("drop_by", "server")
    ways = {"client": f"client: {fmt(m['drop_rate'] * 100)}% of streams are cut at a random token by their user, "
                      "who closes its own socket",
            "server": f"server: {fmt(m['drop_rate'] * 100)}% of streams are cut at a random token by the gateway",
            "proxy": f"proxy: a relay (lab/links.py) in front of {m.get('cut_front', 'direct')} resets each "
                     f"connection {fmt(m.get('cut_s'), 3)} s after it opened, as a load balancer's connection age "
                     "limit or a NAT timeout does: every longer stream is cut"}
    by = "; ".join(ways[b] for b in ([drop_by] if isinstance(drop_by, str) else drop_by))
    recon = Table("Reconnection: streams cut mid-way, the users resume",
                  ["transport", "cut by", "streams", "resumes (gateway)", "resume stall p50", "resume stall p95",
                   "resume stall p99", "p95 per run", "gaps", "duplicates", "cut streams", "cut before any answer",
                   "other failures",
                   "wasted tokens"],
                  note=f"Cut by the {by}. Resume stall = "
                       "from the last token before the cut to the next new token, in ms, as a user sees it: the "
                       "client's own wait is in it (EventSource: the server's retry; fetch and WebSocket: the "
                       "page's backoff). Cut before any answer: the request was cut before a byte came back, so the client "
                       "had no stream id to resume with (it may send it again); cut streams: begun, never resumed. "
                       "Wasted tokens: generated after a stream's last reader left, for nobody "
                       "(gateway_wasted_tokens_total).", id="reconnect")
    for cid, cr in cells.items():
        c = cr[0]
        if c["kind"] != "reconnect":
            continue
        f = _pooled(cr)
        rf = figs.get(cid, {}).get("resume", {})
        recon.rows.append([c["transport"], cut_by(c, m), fmt(f["streams"]), fmt(sum(r["gateway"]["resumes"] for r in cr)),
                           ci(rf.get("p50")), ci(rf.get("p95")), ci(rf.get("p99")), spread(rf.get("p95")),
                           fmt(f["gaps"]), fmt(f["duplicates"]), fmt(f["cut"]), fmt(f["unanswered"]), fmt(f["other"]),
                           fmt(sum(r["gateway"].get("wasted_tokens", 0) for r in cr))])
    t["reconnect"] = recon

    proxy = Table("Proxy effect: the same load through each path",
                  ["transport", "path", "concurrent", "outcome", "why", "fix"],
                  note="Outcomes, worst first: " + " < ".join(OUTCOMES) + ". The fix: the lines the lab's tuned "
                       "config has and this path's lacks.", id="proxies")
    for tr, summ in s.items():
        for path, p in summ["proxy_paths"].items():
            cell = next(c for c in results["cells"] if c["transport"] == tr and c["path"] == path)
            proxy.rows.append([tr, path, fmt(cell["users"]), p["outcome"], "; ".join(p["reasons"]) or "spaced as sent",
                               p.get("fix") or "–"])
    t["proxies"] = proxy

    wire = {w["transport"]: w for w in results.get("wire", [])}
    mem = {x["transport"]: x for x in results.get("memory", [])}
    cost = Table("Cost per transport",
                 ["transport", "gateway CPU per token (us)", "memory per open connection (KiB)",
                  "bytes on the wire per token", "body bytes per event", "token text bytes per token"],
                 note=(f"CPU: gateway user+system time (/proc/<pid>/stat) over the load cell at {max(m['concurrency'])} "
                       f"streams, divided by the tokens it delivered (gateway /metrics); mean of {runs} runs "
                       "[95% interval]. Memory: gateway RSS with "
                       f"{m['memory_connections']} open streams minus before (after three warm-up streams), on a fresh "
                       "gateway per transport, by the benchmark's load client (loadtests/bench/load.py). "
                       f"Wire: every byte the gateway sent for {m['wire_streams']} whole {m['max_tokens']}-token "
                       "streams (headers, chunked or WebSocket framing), counted by a relay, per token."), id="cost")
    for tr in m["transports"]:
        w, x = wire.get(tr, {}), mem.get(tr, {})
        cost.rows.append([tr, ci(s[tr]["cpu_us_per_token"]),
                          fmt(None if x.get("bytes_per_connection") is None else x["bytes_per_connection"] / 1024),
                          fmt(w.get("wire_bytes_per_token")), fmt(w.get("body_bytes_per_event")),
                          fmt(w.get("payload_bytes_per_token"))])
    t["cost"] = cost

    bv = rec["baseline"]
    base = Table("When not to stream: the same answer, complete vs streamed (median ms)",
                 ["answer tokens", "not streamed: whole answer", "streamed: first words", "streamed: whole answer",
                  "first words sooner by", "verdict"],
                 note=bv["rule"], id="baseline")
    for r in results.get("baseline", []):
        base.rows.append([fmt(r["tokens"]), fmt(r["complete_ms"]), fmt(r["stream_first_words_ms"]),
                          fmt(r["stream_whole_ms"]), fmt(r["gain_ms"]),
                          "stream" if r["gain_ms"] >= NOTICEABLE_MS else "streaming buys little"])
    t["baseline"] = base

    caps = Table("Capabilities the rules use (facts, not measurements)",
                 ["transport", "browser API", "browser resumes by itself", "client talks back on the connection"],
                 id="capabilities")
    for tr in m["transports"]:
        cap = CAPABILITIES[tr]
        caps.rows.append([tr, cap["browser_api"], fmt(cap["browser_resumes"]), fmt(cap["talks_back"])])
    t["capabilities"] = caps
    return t


def _warnings(results: dict) -> list[str]:
    out = list(results.get("notes", []))
    out += [f"Cell {_label(c)} x{c['users']} (run {c.get('run', 0) + 1}): {c['problem']}."
            for c in results["cells"] if c.get("problem")]
    sat = [c for c in results["cells"] if c["load_generator"]["saturated"]]
    for c in sat:
        lg = c["load_generator"]
        if lg["locust_cpu_warning"]:
            why = "Locust warned about its CPU"
        elif lg.get("users_report_saturated"):
            why = f"the users' event loop ran late (p99 {fmt(lg.get('event_loop_lag_p99_ms'))} ms)"
        else:
            why = f"Locust used {lg['cpu_share_peak']:.0%} of a core"
        out.append(f"Load generator saturated in {_label(c)} x{c['users']} (run {c.get('run', 0) + 1}): {why}; "
                   "its latency figures there "
                   "include Locust's own queueing, not only the gateway's.")
    cores = results["conditions"]["machine"]["cores"]
    load = results["conditions"]["machine"]["loadavg_start"][0]
    if cores and load > cores * 0.75:
        out.append(f"The machine was busy before the run (load average {load:.1f} on {cores} cores): "
                   "expect noisy figures.")
    return out


def _conditions(results: dict) -> Table:
    c = results["conditions"]
    mach = c["machine"]
    t = Table("Conditions", ["what", "value"], id="conditions")
    t.rows.append(["command", c["command"]])
    t.rows.append(["started (UTC)", c["started"]])
    t.rows.append(["duration", f"{c.get('duration_s', 0):g} s"])
    t.rows.append(["machine", f"{mach['cpu']}, {mach['cores']} cores, "
                              f"{fmt((mach['memory_bytes'] or 0) / 2**30)} GiB, {mach['platform']}"])
    t.rows.append(["load average (start, end)", f"{mach['loadavg_start'][0]:.2f}, {c.get('loadavg_end', [0])[0]:.2f}"])
    t.rows.append(["versions", ", ".join(f"{k} {v}" for k, v in c["versions"].items())])
    m = results["matrix"]
    t.rows.append(["matrix", f"transports {', '.join(m['transports'])}; concurrency "
                             f"{', '.join(map(str, m['concurrency']))}; paths {', '.join(m['paths'])}; "
                             f"{fmt(m['token_rate'])} tokens/s; TTFT {fmt(m['ttft_ms'])} ms; {m['max_tokens']} "
                             f"tokens per answer; prompt {m['prompt_bytes']} bytes; drop rate {fmt(m['drop_rate'])}; "
                             f"{fmt(m['cell_s'])} s per cell"])
    gs = c["gateway_settings"]
    t.rows.append(["gateway settings", ", ".join(f"{k}={v}" for k, v in gs.items())])
    return t


def _plots(results: dict) -> dict[str, str]:
    m = results["matrix"]
    s = results["recommendations"]["summary"]
    out = {}
    one = first_run(results)  # the plots draw the first run's Locust histograms
    direct = [c for c in one if c["kind"] == "load" and c["path"] == "direct"]
    if direct:
        low = min(c["users"] for c in direct)
        series = {c["transport"]: {k: (c["locust"].get(k) or {}).get("histogram") for k in ("ttft", "inter_token")}
                  for c in direct if c["users"] == low}
        out["cdf"] = plots.latency_cdf(series, m["itl_ms"], m["ttft_ms"])
        out["cdf_caption"] = f"At {low} concurrent streams, direct, first run. Dashed: what the model sends."
    loads = direct
    if loads:
        rows = [{"label": _label(c), "users": c["users"], "tokens_per_s": c["gateway"]["tokens_per_s"],
                 "ttft_p95": (c["locust"].get("ttft") or {}).get("p95"),
                 "itl_p99": (c["locust"].get("inter_token") or {}).get("p99"),
                 "slipped": bool(slip_reasons(c, m))} for c in loads]
        out["concurrency"] = plots.concurrency(rows, m["itl_ms"], m["ttft_ms"],
                                               SLIP["itl_p99_factor"] * m["itl_ms"],
                                               m["ttft_ms"] + SLIP["ttft_p95_extra_ms"])
    if results.get("baseline"):
        out["baseline"] = plots.baseline(results["baseline"], NOTICEABLE_MS)
    wire = {w["transport"]: w for w in results.get("wire", [])}
    mem = {x["transport"]: x["bytes_per_connection"] for x in results.get("memory", [])}
    out["cost"] = plots.cost(m["transports"], {t: (s[t]["cpu_us_per_token"] or {}).get("value")
                                              for t in m["transports"]}, mem,
                             {t: w["wire_bytes_per_token"] for t, w in wire.items()},
                             {t: w["payload_bytes_per_token"] for t, w in wire.items()})
    recs = [c for c in one if c["kind"] == "reconnect"]
    several = len({cut_by(c, m) for c in recs}) > 1
    rec = {c["transport"] + (f" ({cut_by(c, m)})" if several else ""): c["locust"].get("reconnect") or {}
           for c in recs}
    if any(r.get("p50") is not None for r in rec.values()):
        out["reconnect"] = plots.reconnect(rec)
    return out


def write_csv(path: Path, results: dict) -> None:
    """results.csv: one row per cell, run and metric: the exact figures each run gave."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["cell", "run", "kind", "transport", "path", "users", "metric", "samples", "of", "p50", "p90",
                    "p95", "p99", "mean", "gateway_tokens", "gateway_tokens_per_s", "gateway_cpu_us_per_token",
                    "locust_cpu_peak", "load_generator_saturated"])
        for c in results["cells"]:
            g = c["gateway"]
            for metric, v in (c.get("exact") or {}).items():
                w.writerow([c["cell"], c.get("run", 0), c["kind"], c["transport"], c["path"], c["users"], metric,
                            v["count"], v["of"], v["p50"], v["p90"], v["p95"], v["p99"], v["mean"], g["tokens"],
                            g["tokens_per_s"], g["cpu_us_per_token"], c["load_generator"]["cpu_share_peak"],
                            c["load_generator"]["saturated"]])


def _network_tables(results: dict) -> list[Table]:
    """The rows of a networks run (python -m loadtests networks, or compare --networks), if any."""
    if not results.get("networks"):
        return []
    from ..networks import tables

    return tables(results["networks"])


def _markdown(results: dict, tables: dict[str, Table], warnings: list[str]) -> str:
    c = results["conditions"]
    bv = results["recommendations"]["baseline"]
    parts = ["# Transport comparison", "",
             f"`{c['command']}`, {c['started']} UTC, {c.get('duration_s', 0):g} s. Raw data: `raw/`.", ""]
    if warnings:
        parts += ["**Warnings**", ""] + [f"- {w}" for w in warnings] + [""]
    parts += [tables["verdicts"].markdown(), _baseline_sentence(bv), "", tables["baseline"].markdown(),
              tables["latency"].markdown(), tables["load"].markdown(), tables["reconnect"].markdown()]
    parts.append(tables["proxies"].markdown() if tables["proxies"].rows
                 else "### Proxy effect\n\nNo proxy path ran (see the warnings).\n")
    parts += [tables["cost"].markdown(), tables["capabilities"].markdown()]
    parts += [t.markdown() for t in _network_tables(results)]
    parts.append(_conditions(results).markdown())
    return "\n".join(parts)


def _baseline_sentence(bv: dict) -> str:
    if bv["not_worth_below"] is None and bv["streaming_pays_from"] is not None:
        return f"Streaming paid off at every measured length (from {bv['streaming_pays_from']} tokens)."
    if bv["streaming_pays_from"] is None:
        return "Streaming never paid off at the measured lengths."
    est = (f" At {bv['ms_per_token']:g} ms per token the break-even is about {bv['break_even_tokens']} tokens."
           if bv["break_even_tokens"] else "")
    return (f"Streaming buys little at {bv['not_worth_below']} tokens or fewer and pays off from "
            f"{bv['streaming_pays_from']} tokens.{est}")


_CSS = """
:root{--ink:#111827;--muted:#6b7280;--line:#e5e7eb;--bg:#f8fafc;--card:#fff;--win:#065f46;--winbg:#d1fae5}
*{box-sizing:border-box}body{margin:0;background:var(--bg);color:var(--ink);
font:14px/1.5 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
main{max-width:1180px;margin:0 auto;padding:28px 24px 60px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:18px;margin:34px 0 10px;padding-bottom:6px;border-bottom:2px solid var(--line)}
h3{font-size:14px;margin:18px 0 6px;color:#374151}.sub{color:var(--muted);margin:0 0 18px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 18px;margin:12px 0;
box-shadow:0 1px 2px rgba(0,0,0,.04)}
.warn{background:#fffbeb;border-color:#fcd34d}.warn li{margin:2px 0}
table{border-collapse:collapse;width:100%;font-size:13px;font-variant-numeric:tabular-nums}
th{text-align:left;font-weight:600;color:#374151;background:#f3f4f6;border-bottom:1px solid var(--line);padding:6px 8px;vertical-align:bottom}
td{border-bottom:1px solid var(--line);padding:5px 8px;vertical-align:top}tbody tr:nth-child(even){background:#fafafa}
.scroll{overflow-x:auto}.note{color:var(--muted);font-size:12.5px;margin:2px 0 8px}
.win{font-weight:700;color:var(--win)}.badge{display:inline-block;padding:1px 9px;border-radius:999px;background:var(--winbg);color:var(--win);font-weight:700}
.none{color:var(--muted)}.rule{color:var(--muted);font-size:12.5px}.slip{color:#b91c1c}.ok{color:#047857}
.fig.narrow svg{max-width:700px;display:block}.fig svg{width:100%;height:auto}
.fig .cap{color:var(--muted);font-size:12px;margin-top:4px}
nav a{color:#2563eb;text-decoration:none;margin-right:14px;font-size:13px}
.lead{font-size:15px}
""" + "".join(f".t-{t}{{color:{c}}}" for t, c in plots.COLORS.items()) + "\n"


def _fig(svg: str | None, caption: str = "", narrow: bool = False) -> str:
    if not svg:
        return ""
    cap = f'<div class="cap">{html.escape(caption)}</div>' if caption else ""
    return f'<div class="card fig{" narrow" if narrow else ""}">{svg}{cap}</div>'


def _verdict_html(table: Table) -> str:
    rows = []
    for need, winner, why, rule in table.rows:
        plain = winner.startswith(("tie", "not measured")) or winner == "none"
        badge = (f'<span class="none">{html.escape(winner)}</span>' if plain
                 else f'<span class="badge t-{html.escape(winner)}">{html.escape(winner)}</span>')
        rows.append(f"<tr><td><b>{html.escape(need)}</b></td><td>{badge}</td><td>{html.escape(why)}</td>"
                    f'<td class="rule">{html.escape(rule)}</td></tr>')
    note = f'<p class="note">{html.escape(table.note)}</p>' if table.note else ""
    return (f'{note}<div class="scroll"><table><thead><tr><th>need</th><th>verdict</th><th>measured</th><th>rule</th>'
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")


def _classes(table: Table, col: str, good: str) -> list[list[str]]:
    i = table.headers.index(col)
    def cls(text: str) -> str:
        return "ok" if text.split(":")[0] == good else "none" if text.startswith("not judged") else "slip"
    return [["" if j != i else cls(row[i]) for j in range(len(row))]
            for row in table.rows]


def _networks_html(results: dict) -> str:
    extra = _network_tables(results)
    if not extra:
        return ""
    return ('<h2 id="networks">Networks and hard paths</h2><p class="note">From lab/links.py profiles and the '
            "lab's strict, HTTP/2 and TLS paths (docs/networks.md).</p>"
            + "".join(f'<div class="card">{t.html()}</div>' for t in extra))


def _html(results: dict, tables: dict[str, Table], figs: dict[str, str], warnings: list[str]) -> str:
    c = results["conditions"]
    bv = results["recommendations"]["baseline"]
    warn = ("<div class='card warn'><b>Warnings</b><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
            + "</ul></div>") if warnings else ""
    proxies = (tables["proxies"].html(_classes(tables["proxies"], "outcome", "clean")) if tables["proxies"].rows
               else "<p class='note'>No proxy path ran (see the warnings).</p>")
    nav = "".join(f'<a href="#{a}">{b}</a>' for a, b in (
        ("verdicts", "Verdicts"), ("baseline", "When not to stream"), ("latency", "Latency"), ("load", "Concurrency"),
        ("reconnect", "Reconnection"), ("proxies", "Proxies"), ("cost", "Cost"), ("conditions", "Conditions")))
    body = f"""
<main>
<h1>Transport comparison: SSE, NDJSON, WebSocket</h1>
<p class="sub"><code>{html.escape(c['command'])}</code> · {html.escape(c['started'])} UTC · {c.get('duration_s', 0):g} s ·
raw data in <a href="raw/">raw/</a> · <a href="summary.md">summary.md</a></p>
<nav>{nav}</nav>
{warn}
<h2 id="verdicts">Which transport for which need</h2>
<p class="note">Each verdict comes from the measured figures below and the rule next to it; change the
traffic (flags) and the verdicts follow the numbers.</p>
<div class="card">{_verdict_html(tables['verdicts'])}</div>
<h2>When not to stream</h2>
<p class="lead">{html.escape(_baseline_sentence(bv))}</p>
{_fig(figs.get('baseline'), narrow=True)}
<div class="card">{tables['baseline'].html(_classes(tables['baseline'], 'verdict', 'stream'))}</div>
<h2>Time to first token and gaps between tokens</h2>
{_fig(figs.get('cdf'), figs.get('cdf_caption', ''))}
<div class="card">{tables['latency'].html()}</div>
<h2>Throughput and lateness against concurrency</h2>
{_fig(figs.get('concurrency'), 'Direct to the gateway. Red circles: cells that slipped. Red dashed: the slip limits; dotted: what the model sends.')}
<div class="card">{tables['load'].html(_classes(tables['load'], 'verdict', 'keeps pace'))}</div>
<h2>Reconnection</h2>
{_fig(figs.get('reconnect'), narrow=True)}
<div class="card">{tables['reconnect'].html()}</div>
<h2>Proxy effect</h2>
<div class="card">{proxies}</div>
<h2>Cost</h2>
{_fig(figs.get('cost'))}
<div class="card">{tables['cost'].html()}</div>
<div class="card">{tables['capabilities'].html()}</div>
{_networks_html(results)}
<h2>Conditions</h2>
<div class="card">{_conditions(results).html()}</div>
</main>"""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Transport comparison</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>'
            f"<body>{body}</body></html>")


def write(out: Path, results: dict) -> Path:
    tables = build(results)
    warnings = _warnings(results)
    (out / "summary.md").write_text(_markdown(results, tables, warnings))
    write_csv(out / "raw" / "results.csv", results)
    index = out / "index.html"
    index.write_text(_html(results, tables, _plots(results), warnings))
    return index
