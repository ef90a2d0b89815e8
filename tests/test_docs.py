"""The README and docs/ say what runs: every code block meant to run runs here, against a real gateway.

A fenced block's info string is its language, then flags: `bash` and `python` blocks run (bash with
`-e -o pipefail`, bounded in time), unless flagged `norun` (they start long-running processes or need
your own URL). Other languages (`text`, `nginx`, `haproxy`, ...) are shown, not run. Addresses on port
8000 are pointed at the test's gateway.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from .support import ROOT, gateway

RUNS = {"bash", "sh", "python"}
SHOWN = {"text", "nginx", "haproxy", "yaml", "json", "console", "dockerfile", "ini", "toml", "http", "js",
         "javascript", "html", "mermaid"}
FENCE = re.compile(r"^(```+|~~~+)(.*)$")
PORT_8000 = re.compile(r"\b(localhost|127\.0\.0\.1):8000\b")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    flags: tuple[str, ...]
    code: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.lang in RUNS and "norun" not in self.flags


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(path: Path) -> list[Block]:
    out, lines, i = [], path.read_text().splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        fence, info, start = m.group(1), m.group(2).split(), i + 1
        i += 1
        while i < len(lines) and not lines[i].startswith(fence):
            i += 1
        out.append(Block(path, start, info[0] if info else "", tuple(info[1:]), "\n".join(lines[start:i])))
        i += 1
    return out


ALL = [b for p in documents() for b in blocks(p)]
RUNNABLE = [b for b in ALL if b.runs]


def test_every_block_says_what_it_is():
    unmarked = [b.id for b in ALL if b.lang not in RUNS | SHOWN]
    assert not unmarked, (f"code blocks without a known language in their info string: {unmarked}; "
                          f"use one of {sorted(RUNS)} (run by this test; add `norun` to skip) or {sorted(SHOWN)}")
    assert len(RUNNABLE) >= 4  # the README's curl blocks and client, the OpenAI snippet


def test_readme_starts_with_the_two_commands():
    first = blocks(ROOT / "README.md")[0]
    lines = first.code.splitlines()
    assert len(lines) == 2, "the README's first code block is two lines: run it, test it (.ci/run runs line 2)"
    assert "python -m gateway lab" in lines[0] and "--locked" in lines[0]
    assert "pytest" in lines[1] and "--locked" in lines[1]
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_relative_links_resolve():
    broken = []
    for path in documents():
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if "://" not in target and not (path.parent / target).exists():
                broken.append(f"{path.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_named_files_exist():
    """A file the docs name by its path (`gateway/journal.py`, `tests/test_proxies.py::test_x`) exists:
    a rename or a removal shows up here, with the line to fix."""
    stale = []
    for path in documents():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for name in re.findall(r"`((?:gateway|loadtests|lab|tests|docs)/(?:[\w.-]+/)*(?:[\w-]+\.(?:py|md|conf|cfg|"
                                   r"yaml|sh|png|json|js|css|html)|[\w-]+/)?)(?:::\w+)?`", line):
                if not (ROOT / name).exists():
                    stale.append(f"{path.relative_to(ROOT)}:{n}: {name}")
    assert not stale, "the docs name files that do not exist (renamed or removed?):\n" + "\n".join(stale)


# The blocks that leave the pace to the simulated model (its defaults: 300 ms to the first token, 25 ms apart)
# get it faster here; a block that states a pace (`"sim": {"itl_ms": 100}`) keeps it. What a block checks is
# its text and its ending, never its pace (docs/llm-apis.md's 300 tokens took 14-25 s of the module's 40-60).
FAST_SIM = {"GATEWAY_SIM_TTFT_MS": "30", "GATEWAY_SIM_ITL_MS": "3"}


@pytest.fixture(scope="module")
def gw():
    with gateway(FAST_SIM) as g:
        yield g


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: b.id)
def test_block_runs(block: Block, gw):
    code = PORT_8000.sub(f"127.0.0.1:{gw.port}", block.code)
    argv = [sys.executable, "-c", code] if block.lang == "python" else ["bash", "-e", "-o", "pipefail", "-c", code]
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "PYTHONPATH": str(ROOT)}
    r = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{block.id} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    if re.search(r"/v1/(sse|ndjson)|/v1/streams/\S+/(sse|ndjson)", code) and "curl" in code:
        # every stream a curl block reads ends with its terminal event, on both framings
        ends = len(re.findall(r'^event: done$|"type": ?"done"', r.stdout, re.MULTILINE))
        reads = len(re.findall(r"^\s*curl -s?N\b(?!.*--max-time)", code, re.MULTILINE))
        assert ends >= reads, f"{block.id}: {reads} streams read to the end, {ends} done events:\n{r.stdout[-2000:]}"
