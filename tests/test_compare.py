"""`python -m gateway compare` end to end: a tiny matrix against real processes (gateway, Locust),
then the report's figures checked against the raw data they come from."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from loadtests.compare.report import fmt

from .support import ROOT, require, require_module

# Locust's own percentile function, in a child process: importing locust here would
# monkey-patch this test process (gevent) under every other test.
_LOCUST_PERCENTILES = """
import json, sys
from locust.stats import calculate_response_time_percentile as pct
out = {}
for path in sys.argv[1:]:
    for e in json.load(open(path)):
        times = {int(k): v for k, v in e["response_times"].items()}
        n = e["num_requests"]
        out[f"{path}|{e['method']}|{e['name']}"] = [n, e["num_failures"]] + [pct(times, n, q) for q in (0.5, 0.95, 0.99)]
print(json.dumps(out))
"""


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


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    require_module("locust")
    require("nginx")  # the tiny matrix has one proxy path, through the lab's tuned nginx
    out = tmp_path_factory.mktemp("compare") / "report"
    proc = subprocess.run([sys.executable, "-m", "gateway", "compare", "--preset", "tiny", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    # The progress bar went to stderr, with time left.
    assert "left" in proc.stderr and "report:" in proc.stderr
    return out


def test_report_files(report: Path):
    for name in ("index.html", "summary.md", "raw/results.json", "raw/results.csv", "raw/gateway.log"):
        assert (report / name).is_file(), name
    results = json.loads((report / "raw/results.json").read_text())
    kinds = {(c["kind"], c["transport"], c["path"]) for c in results["cells"]}
    assert kinds == {(k, t, p) for k, p in (("load", "direct"), ("load", "nginx-tuned"), ("reconnect", "direct"))
                     for t in ("sse_post", "ws")}
    assert results["paths"]["nginx-tuned"] != results["paths"]["direct"]
    for c in results["cells"]:
        assert c["users_reached"] == c["users"] and c["problem"] is None, c["cell"]
        assert (report / "raw" / f"{c['cell']}.json").is_file()
        assert (report / "raw" / f"{c['cell']}_stats.csv").is_file()


def test_latency_figures_equal_locust_raw_data(report: Path):
    results = json.loads((report / "raw/results.json").read_text())
    raw = sorted(str(p) for p in (report / "raw").glob("*-c*.json") if not p.name.endswith(("_extra.json", "_transports.json")))
    out = subprocess.run([sys.executable, "-c", _LOCUST_PERCENTILES, *raw], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    locust = json.loads(out.stdout)
    rows = md_table((report / "summary.md").read_text(), "Latency per cell")
    load = [c for c in results["cells"] if c["kind"] == "load"]
    assert len(rows) == len(load) == 4
    for row, cell in zip(rows, load):
        assert (row["transport"], row["path"]) == (cell["transport"], cell["path"])
        path = str(report / "raw" / f"{cell['cell']}.json")
        n, failed, *pcts = locust[f"{path}|{cell['transport']}|ttft"]
        assert n > 0
        assert row["streams"] == str(n)
        assert [row["TTFT p50"], row["TTFT p95"], row["TTFT p99"]] == [fmt(float(p)) for p in pcts]
        n, failed, *pcts = locust[f"{path}|{cell['transport']}|inter_token"]
        assert n > 0
        assert [row["inter-token p50"], row["inter-token p95"], row["inter-token p99"]] == [fmt(float(p)) for p in pcts]
        stream = locust[f"{path}|{cell['transport']}|stream"]
        assert row["failed streams"] == str(stream[1])


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
    for row, cell in zip(md_table(md, "Throughput and lateness"), [c for c in results["cells"] if c["kind"] == "load"]):
        g = cell["gateway"]
        assert g["tokens"] > 0 and g["cpu_s"] > 0
        assert row["tokens/s"] == fmt(g["tokens"] / cell["duration_s"])
    # The reconnection cells: the gateway really cut streams and the users resumed without loss.
    for row, cell in zip(md_table(md, "Reconnection"), [c for c in results["cells"] if c["kind"] == "reconnect"]):
        assert cell["gateway"]["drops"] > 0 and cell["gateway"]["resumes"] > 0
        assert row["resumes (gateway)"] == str(cell["gateway"]["resumes"])
        assert (row["gaps"], row["duplicates"]) == ("0", "0")
    for row, b in zip(md_table(md, "When not to stream"), results["baseline"]):
        assert row["answer tokens"] == str(b["tokens"])
        assert row["not streamed: whole answer"] == fmt(b["complete_ms"])
    # Longer answers take longer without streaming; the first streamed words do not wait for them.
    short, long = results["baseline"][0], results["baseline"][-1]
    assert long["complete_ms"] > short["complete_ms"] + 200
    assert long["stream_first_words_ms"] < long["complete_ms"] / 2
    # Every verdict is printed with its rule, and equals the one computed from the raw figures.
    verdicts = md_table(md, "Which transport for which need")
    assert [v["need"] for v in verdicts] == [r["need"] for r in results["recommendations"]["table"]]
    for v, r in zip(verdicts, results["recommendations"]["table"]):
        assert v["winner"] == (r["winner"] or "none") and v["rule"] == r["rule"]
    by_need = {v["need"]: v for v in verdicts}
    assert by_need["bidirectional control"]["winner"] == "ws"  # the only one measured that talks back
    # Through the proxy: the proxy table shows each cell's own figures, and tokens came through.
    proxied = [c for c in results["cells"] if c["path"] == "nginx-tuned"]
    for row, c in zip(md_table(md, "Proxy effect"), proxied):
        assert (row["transport"], row["path"]) == (c["transport"], "nginx-tuned")
        assert row["streams"] == str(c["locust"]["ttft"]["count"]) and c["locust"]["ttft"]["count"] > 0
        assert row["TTFT p50"] == fmt(c["locust"]["ttft"]["p50"])
        assert c["gateway"]["tokens"] > 0  # counted by the lab's gateway behind the proxy
    for t in ("sse_post", "ws"):
        w = next(w for w in results["wire"] if w["transport"] == t)
        m = next(m for m in results["memory"] if m["transport"] == t)
        assert w["wire_bytes_per_token"] > w["payload_bytes_per_token"] > 0
        assert m["connections"] == results["matrix"]["memory_connections"] and m["bytes_per_connection"] > 0


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
