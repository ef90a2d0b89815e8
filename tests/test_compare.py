"""`python -m gateway compare` end to end: a tiny matrix against real processes (gateway, Locust),
then the report's figures checked against the raw data they come from."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from loadtests.compare.report import fmt

from .support import ROOT, require, require_module

# Each cell runs 3 times and every Locust run starts a process: a tiny comparison takes 2-7 minutes
# (the more the shared machine is loaded, the longer), and the module runs three.
pytestmark = pytest.mark.timeout(1800)

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
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    # The progress bar went to stderr, with time left.
    assert "left" in proc.stderr and "report:" in proc.stderr
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    require_module("locust")
    require("nginx")  # the tiny matrix has one proxy path, through the lab's tuned nginx
    return run_compare(tmp_path_factory.mktemp("compare") / "report")


def test_report_files(report: Path):
    for name in ("index.html", "summary.md", "raw/results.json", "raw/results.csv", "raw/gateway.log"):
        assert (report / name).is_file(), name
    results = json.loads((report / "raw/results.json").read_text())
    runs = results["matrix"]["runs"]
    assert runs >= 3
    kinds = {(c["kind"], c["transport"], c["path"], c["run"]) for c in results["cells"]}
    assert kinds == {(k, t, p, r) for k, p in (("load", "direct"), ("load", "nginx-tuned"), ("reconnect", "direct"))
                     for t in ("sse_post", "ws") for r in range(runs)}
    assert results["paths"]["nginx-tuned"] != results["paths"]["direct"]
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
    assert checked == 3 * 4  # three metrics, four load cells


def test_html_shows_the_same_tables_as_markdown(report: Path):
    md = (report / "summary.md").read_text()
    page = (report / "index.html").read_text()
    parser = _Tables()
    parser.feed(page)
    for table_id, title in (("latency", "Latency per cell"), ("load", "Throughput and lateness"),
                            ("proxies", "Proxy effect"),
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
    # The reconnection cells: the users cut their own sockets, the gateway saw them resume, nothing lost.
    for row in md_table(md, "Reconnection"):
        cells = [c for c in results["cells"] if c["kind"] == "reconnect" and c["transport"] == row["transport"]]
        assert all(c["gateway"]["resumes"] > 0 and c["gateway"]["drops"] == 0 for c in cells)
        assert row["resumes (gateway)"] == str(sum(c["gateway"]["resumes"] for c in cells))
        assert (row["gaps"], row["duplicates"], row["cut streams"]) == ("0", "0", "0")
        assert row["resume stall p95"] != "–"
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
    # Through the proxy: an outcome per transport, and tokens came through.
    for row in md_table(md, "Proxy effect"):
        assert row["path"] == "nginx-tuned" and row["outcome"] in ("clean", "delayed", "held until the end")
    for c in (c for c in results["cells"] if c["path"] == "nginx-tuned"):
        assert c["gateway"]["tokens"] > 0  # counted by the lab's gateway behind the proxy
    for t in ("sse_post", "ws"):
        w = next(w for w in results["wire"] if w["transport"] == t)
        m = next(m for m in results["memory"] if m["transport"] == t)
        assert w["wire_bytes_per_token"] > w["payload_bytes_per_token"] > 0
        assert m["connections"] == results["matrix"]["memory_connections"] and m["bytes_per_connection"] > 0


def test_the_same_preset_twice_gives_the_same_verdicts(tmp_path):
    """Ties count: a verdict the evidence does not carry is a tie both times, not a coin flip.
    (The `repeat` preset: tiny's direct load cells, 3 runs each, without the slow extras.)"""
    require_module("locust")
    tables = []
    for name in ("first", "second"):
        out = run_compare(tmp_path / name, "repeat")
        tables.append(json.loads((out / "raw/results.json").read_text())["recommendations"]["table"])
    first, second = ([(r["need"], r["verdict"]) for r in t] for t in tables)
    assert first == second
    verdicts = dict(first)
    assert verdicts["bidirectional control"] == "ws"  # only ws talks back: a verdict, not a tie
    assert verdicts["resumability"] == "not measured"  # --drop-rate 0 in this preset: nothing was cut


@pytest.mark.parametrize("flags, message", [
    (["--transports", "sse,carrier-pigeon"], "unknown transport"),
    (["--concurrency", "ten"], "comma-separated numbers"),
    (["--concurrency", "0,10"], "positive integers"),
    (["--drop-rate", "1.5"], "between 0 and 1"),
    (["--token-rate", "0"], "must be positive"),
])
def test_bad_flags_are_refused_before_anything_starts(flags, message, tmp_path):
    from gateway.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["compare", *flags, "--out", str(tmp_path / "never")])
    assert message in str(exc.value.code)
    assert not (tmp_path / "never").exists()
