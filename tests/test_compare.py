"""`python -m gateway compare` end to end: one tiny matrix against real processes (the gateway, Locust, tuned
nginx from the lab and a relay that cuts connections in front of it), shared by every test here, then the
report's figures checked against the raw data they come from; and a second real run whose verdicts must not
contradict the first's. The rules themselves (winners, ties, proxy outcomes, statistics) are checked on fixed
figures in test_compare_rules.py, without processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from loadtests.compare.report import fmt

from .support import ROOT, require, require_module

# Each cell runs 3 times and every Locust run starts a process (3-5 s of it start-up): the shared tiny
# comparison takes 1-3 minutes (the more the shared machine is loaded, the longer), the second run about
# half of that.
pytestmark = pytest.mark.timeout(900)

def md_table(text: str, title: str) -> list[dict[str, str]]:
    """The rows of the markdown table under `### <title>...`, as dicts by header."""
    section = text[text.index("### " + title):]
    lines = [line for line in section.splitlines()[1:] if line.startswith("|")]
    end = next((i for i, line in enumerate(section.splitlines()[1:]) if line.startswith("### ")), None)
    if end is not None:
        lines = [line for line in section.splitlines()[1:end + 1] if line.startswith("|")]
    headers = [h.strip() for h in lines[0].strip("|").split("|")]
    return [dict(zip(headers, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


class _Tables(HTMLParser):
    """Every <table> in the page as (caption-ish id, rows of cell text)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._id = ""
        self._rows: list[list[str]] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "h3":
            self._id = dict(attrs).get("id", "")
        elif tag == "table":
            self._rows = []
        elif tag == "tr" and self._rows is not None:
            self._rows.append([])
        elif tag in ("td", "th") and self._rows is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._rows[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table" and self._rows is not None:
            self.tables[self._id] = self._rows
            self._rows = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def run_compare(out: Path, preset: str = "tiny") -> Path:
    proc = subprocess.run([sys.executable, "-m", "gateway", "compare", "--preset", preset, "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    # The progress bar went to stderr, with time left.
    assert "left" in proc.stderr and "report:" in proc.stderr
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    require_module("locust")
    require("nginx")  # the cutting relay stands in front of the lab's tuned nginx
    return run_compare(tmp_path_factory.mktemp("compare") / "report")


def results_of(report: Path) -> dict:
    return json.loads((report / "raw/results.json").read_text())


def test_report_files(report: Path):
    for name in ("index.html", "summary.md", "raw/results.json", "raw/results.csv", "raw/gateway.log"):
        assert (report / name).is_file(), name
    results = json.loads((report / "raw/results.json").read_text())
    runs = results["matrix"]["runs"]
    assert runs >= 3
    kinds = {(c["kind"], c["transport"], c["path"], c["cut_by"], c["run"]) for c in results["cells"]}
    assert kinds == {(k, t, p, by, r) for k, p, by in (("load", "direct", None), ("reconnect", "proxy-cut", "proxy"))
                     for t in ("sse_post", "ws") for r in range(runs)}
    # The relay has its own address, in front of tuned nginx, itself in front of the lab's own gateway.
    assert len({results["paths"][p] for p in ("direct", "nginx-tuned", "proxy-cut")}) == 3
    for c in results["cells"]:
        assert c["users_reached"] == c["users"] and c["problem"] is None, c["cell"]
        name = f"{c['cell']}-r{c['run']}"
        assert (report / "raw" / f"{name}.json").is_file()
        streams = (report / "raw" / f"{name}_streams.jsonl").read_text().splitlines()
        assert len(streams) == c["streams"]["recorded"] > 0  # per-stream raw JSON, one line a stream


def _t_interval(values: list[float]) -> tuple[float, float, float]:
    n = len(values)
    mean = sum(values) / n
    half = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776}[n] * float(np.std(values, ddof=1)) / n ** 0.5
    return mean, max(0.0, mean - half) if min(values) >= 0 else mean - half, mean + half


def test_latency_figures_are_exact_percentiles_of_the_raw_streams(report: Path):
    """Recomputed here with numpy from raw/<cell>-r<run>_streams.jsonl: the report's p50/p95/p99, their
    intervals and sample counts must match."""
    results = json.loads((report / "raw/results.json").read_text())
    rows = md_table((report / "summary.md").read_text(), "Latency per cell")
    keys = {"TTFT": ("ttft_ms", False), "ITL (inter-token)": ("itl_ms", True), "E2E latency": ("e2e_ms", False)}
    checked = 0
    for row in rows:
        if row["metric"] not in keys:
            continue
        field, is_list = keys[row["metric"]]
        cid = f"load-{row['path']}-{row['transport']}-c{row['concurrent']}"
        per_run, total = {50: [], 95: [], 99: []}, 0
        for c in results["cells"]:
            if c["cell"] != cid:
                continue
            lines = (report / "raw" / f"{cid}-r{c['run']}_streams.jsonl").read_text().splitlines()
            records = [json.loads(line) for line in lines]
            values = [v for r in records if r["ok"] for v in (r[field] if is_list else [r[field]])]
            total += len(values)
            for q in per_run:
                per_run[q].append(float(np.percentile(values, q)))
        assert row["samples"].split()[0] == str(total) and total > 0
        for q, vs in per_run.items():
            mean, lo, hi = _t_interval([round(v, 3) for v in vs])
            assert row[f"p{q}"] == f"{fmt(mean)} [{fmt(lo)}–{fmt(hi)}]", (cid, row["metric"], q)
        checked += 1
    assert checked == 3 * 2  # three metrics, two load cells


def test_html_shows_the_same_tables_as_markdown(report: Path):
    md = (report / "summary.md").read_text()
    page = (report / "index.html").read_text()
    parser = _Tables()
    parser.feed(page)
    for table_id, title in (("latency", "Latency per cell"), ("load", "Throughput and lateness"),
                            ("reconnect", "Reconnection"), ("cost", "Cost per transport"),
                            ("baseline", "When not to stream")):
        html_rows = parser.tables[table_id]
        md_rows = md_table(md, title)
        assert [list(r.values()) for r in md_rows] == html_rows[1:], table_id
    # Plots are inline SVG and nothing is fetched from the network.
    assert page.count("<svg") >= 5
    assert not re.search(r"""(src|href)=["']https?://""", page)
    assert "<script" not in page


def test_gateway_figures_and_verdicts_follow_raw_data(report: Path):
    results = json.loads((report / "raw/results.json").read_text())
    md = (report / "summary.md").read_text()
    for row in md_table(md, "Throughput and lateness"):
        cells = [c for c in results["cells"] if c["kind"] == "load" and c["path"] == "direct"
                 and c["transport"] == row["transport"]]
        rates = [c["gateway"]["tokens"] / c["duration_s"] for c in cells]
        assert all(c["gateway"]["tokens"] > 0 and c["gateway"]["cpu_s"] > 0 for c in cells)
        assert row["tokens/s"].split(" [")[0] == fmt(sum(rates) / len(rates))
    # The reconnection cells: the relay reset every connection mid-stream, the users resumed through it and
    # tuned nginx, and the lab's gateway behind them saw the resumes; nothing lost, nothing twice.
    for row in md_table(md, "Reconnection"):
        cells = [c for c in results["cells"] if c["kind"] == "reconnect" and c["transport"] == row["transport"]]
        assert row["cut by"] == "proxy" and all(c["path"] == "proxy-cut" for c in cells)
        assert all(c["gateway"]["resumes"] > 0 and c["gateway"]["drops"] == 0 for c in cells)
        assert all(c["gateway"]["tokens"] > 0 for c in cells)  # counted behind the proxies, not direct
        assert row["resumes (gateway)"] == str(sum(c["gateway"]["resumes"] for c in cells))
        assert (row["gaps"], row["duplicates"], row["cut streams"], row["other failures"]) == ("0", "0", "0", "0")
        # The only loss: a request the relay reset before any answer (a one-shot POST on a kept-alive
        # connection at its age limit), with no stream id to resume from; counted apart, and rare.
        lost = [m for c in cells for m in c["streams"]["failures"]]
        assert all(m.startswith("cut: no response") for m in lost), lost
        assert int(row["cut before any answer"]) <= 0.05 * int(row["streams"])
        assert row["resume stall p95"] != "–"
        # As the user sees it: at least the client's own backoff (gateway/backoff.py, 75 ms or more).
        assert all(v >= 75 for c in cells for v in _resumes(report, c)) and any(_resumes(report, c) for c in cells)
    for row, b in zip(md_table(md, "When not to stream"), results["baseline"]):
        assert row["answer tokens"] == str(b["tokens"])
        assert row["not streamed: whole answer"] == fmt(b["complete_ms"])
    # Every verdict is printed with its rule, and equals the one computed from the raw figures.
    verdicts = md_table(md, "Which transport for which need")
    assert [v["need"] for v in verdicts] == [r["need"] for r in results["recommendations"]["table"]]
    for v, r in zip(verdicts, results["recommendations"]["table"]):
        assert v["verdict"] == r["verdict"] and v["rule"] == r["rule"]
        assert r["verdict"] == r["winner"] or r["verdict"].startswith(("tie: ", "not measured"))
    by_need = {v["need"]: v for v in verdicts}
    assert by_need["bidirectional control"]["verdict"] in ("ws", "not measured")  # only ws talks back
    assert by_need["mobile networks"]["verdict"] == "not measured"
    assert by_need["strict proxies"]["verdict"] == "not measured"  # no load cell through a proxy in tiny
    assert "cut by the proxy" in by_need["resumability"]["measured"] or by_need["resumability"]["verdict"] == "not measured"
    for t in ("sse_post", "ws"):
        w = next(w for w in results["wire"] if w["transport"] == t)
        assert w["wire_bytes_per_token"] > w["payload_bytes_per_token"] > 0
    assert results["memory"] == []  # tiny leaves it out: the benchmark's own test runs it (test_bench.py)


def _resumes(report: Path, cell: dict) -> list[float]:
    lines = (report / "raw" / f"{cell['cell']}-r{cell['run']}_streams.jsonl").read_text().splitlines()
    return [v for line in lines for v in json.loads(line)["resume_ms"]]


# The needs whose verdicts rest on the direct load cells alone, which tiny and repeat share.
LOAD_NEEDS = ("browser client", "bidirectional control", "highest throughput")


def _winners(verdict: str) -> set[str]:
    if verdict.startswith("tie: "):
        return set(verdict.removeprefix("tie: ").split(", "))
    return set() if verdict == "not measured" else {verdict}


def test_a_second_real_run_never_contradicts_the_first(report: Path, tmp_path):
    """The same cells measured again (the `repeat` preset: tiny's direct load cells, 3 runs, by a new gateway
    and new Locust runs): no need gets two different winners. A verdict may be a winner once and a tie
    naming it the other time, or not measured for want of samples: the evidence did not separate, and the
    report says so. (That identical figures give identical verdicts, ties included, is a property of the
    rules alone: test_compare_rules.py checks it on runs with noise. Running the whole tiny preset twice
    would double this module's time for the same check.)"""
    second = results_of(run_compare(tmp_path / "second", "repeat"))
    first = results_of(report)
    assert [c["cell"] for c in second["cells"]] == [c["cell"] for c in first["cells"] if c["kind"] == "load"]
    verdicts = [{r["need"]: r["verdict"] for r in res["recommendations"]["table"]} for res in (first, second)]
    for need in LOAD_NEEDS:
        a, b = (_winners(v[need]) for v in verdicts)
        one = {v[need] for v in verdicts if not v[need].startswith(("tie: ", "not measured"))}
        assert len(one) <= 1, (need, verdicts[0][need], verdicts[1][need])  # never two different winners
        if one and a and b:
            assert one <= a and one <= b, (need, verdicts[0][need], verdicts[1][need])
    # Only ws talks back, and its inter-token gaps are plenty (hundreds a run): a verdict both times.
    assert verdicts[0]["bidirectional control"] == verdicts[1]["bidirectional control"] == "ws"
    assert verdicts[1]["resumability"] == "not measured"  # --drop-rate 0 in repeat: nothing was cut


@pytest.mark.parametrize("flags, message", [
    (["--transports", "sse,carrier-pigeon"], "unknown transport"),
    (["--concurrency", "ten"], "comma-separated numbers"),
    (["--concurrency", "0,10"], "positive integers"),
    (["--drop-rate", "1.5"], "between 0 and 1"),
    (["--token-rate", "0"], "must be positive"),
    (["--drop-by", "client,carrier-pigeon"], "--drop-by takes"),
    (["--drop-by", "client,server"], "pick one"),
])
def test_bad_flags_are_refused_before_anything_starts(flags, message, tmp_path):
    from gateway.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["compare", *flags, "--out", str(tmp_path / "never")])
    assert message in str(exc.value.code)
    assert not (tmp_path / "never").exists()


def test_locust_runs_forked_from_the_fork_server_behave_as_processes(tmp_path, monkeypatch):
    """The comparison's fast path (loadtests/compare/forks.py) against its fallback: the same cell run as a
    fork and as a `python -m locust` process gives the same kind of result (every user, streams recorded,
    no problem); a fork told to stop ends with its process group; closing the server leaves no process;
    GATEWAY_COMPARE_FORKS=0 (or a server that cannot start) means plain processes."""
    require_module("locust")
    from gateway.app import create_app
    from gateway.settings import Settings
    from loadtests.compare import forks
    from loadtests.compare.loadgen import LOCUSTFILE, run_cell
    from loadtests.compare.matrix import Cell, Matrix
    from loadtests.procs import GatewayView

    from .support import uvicorn_thread

    monkeypatch.setenv("GATEWAY_COMPARE_FORKS", "0")
    assert forks.start(ROOT) is None
    monkeypatch.delenv("GATEWAY_COMPARE_FORKS")
    server = forks.start(ROOT)
    assert server is not None
    matrix = Matrix(transports=["sse_post"], concurrency=[2], max_tokens=4, token_rate=100.0, ttft_ms=10.0)
    cell = Cell("load", "sse_post", "direct", 2, 1.0)
    try:
        with uvicorn_thread(create_app(Settings(log_level="warning"))) as port:  # a real gateway, in a thread
            view = GatewayView(f"http://127.0.0.1:{port}", os.getpid())
            results = {}
            for way, via in (("fork", server), ("process", None)):
                (tmp_path / way).mkdir()
                results[way] = run_cell(cell, matrix, view.url, view, tmp_path / way, forks=via)
            for way, r in results.items():
                assert r["problem"] is None and r["users_reached"] == 2, (way, r["problem"])
                assert r["streams"]["recorded"] == r["streams"]["ok"] > 0, (way, r["streams"])
                assert r["locust"]["stream"]["count"] > 0 and r["gateway"]["tokens"] > 0, way
            assert results["fork"].keys() == results["process"].keys()
            long = server.spawn(["-f", str(LOCUSTFILE), "--headless", "--host", view.url, "-u", "2", "-r", "2",
                                 "-t", "60s", "--stop-timeout", "0", "WsUser"], dict(os.environ),
                                tmp_path / "long.log", tmp_path)
            assert long.poll() is None
            long.terminate()
            long.wait(30)  # Locust's own SIGTERM handling: it stops its users and exits
    finally:
        server.close()
    assert server.proc.returncode == 0
    assert not Path(f"/proc/{long.pid}").exists()  # reaped by the server before it exited
