"""The layered import contract (pyproject.toml [tool.importlinter]) and no import cycles in gateway/.

`lint-imports` must keep every contract on this tree, and must break one when a
lower layer imports a higher one (checked on a scratch copy with such an import).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp

from .support import ROOT

LINT = str(Path(sys.executable).with_name("lint-imports"))


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--no-cache"], cwd=root, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_the_contracts_hold():
    out = lint(ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def test_a_lower_layer_importing_a_higher_one_breaks_the_contract(tmp_path):
    shutil.copytree(ROOT / "gateway", tmp_path / "gateway", ignore=shutil.ignore_patterns("__pycache__", "static"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    log = tmp_path / "gateway" / "log.py"
    log.write_text(log.read_text() + "\nfrom .codecs.ws import text_frame  # noqa\n")
    out = lint(tmp_path)
    assert out.returncode != 0
    assert "gateway.log is not allowed to import gateway.codecs" in out.stdout


def _cycles(graph) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan, iterative)."""
    modules = sorted(graph.modules)
    edges = {m: sorted(set(graph.find_modules_directly_imported_by(m)) & set(modules)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out = []
    for root in modules:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = len(index)
                stack.append(v)
                on.add(v)
            if i < len(edges[v]):
                work.append((v, i + 1))
                w = edges[v][i]
                if w not in index:
                    work.append((w, 0))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            if low[v] == index[v]:
                group = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    group.append(w)
                    if w == v:
                        break
                if len(group) > 1:
                    out.append(sorted(group))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return out


def test_no_import_cycles():
    graph = grimp.build_graph("gateway", exclude_type_checking_imports=True)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_one():
    graph = grimp.ImportGraph()
    for name in ("a", "a.x", "a.y", "a.z"):
        graph.add_module(name)
    graph.add_import(importer="a.x", imported="a.y")
    graph.add_import(importer="a.y", imported="a.x")
    graph.add_import(importer="a.y", imported="a.z")
    assert _cycles(graph) == [["a.x", "a.y"]]


def test_the_guard_and_the_transports_take_explicit_dependencies_not_the_service():
    """They get what they use (settings values, stats, clock, the service's calls) from create_app, never
    `Context`: not even for a type hint, which is how the whole service used to come in."""
    graph = grimp.build_graph("gateway", exclude_type_checking_imports=False, cache_dir=None)
    edge = {"gateway.guard", "gateway.transports", *graph.find_descendants("gateway.transports")}
    importers = {m for m in edge if "gateway.service" in graph.find_modules_directly_imported_by(m)}
    assert importers == set()
    assert graph.find_modules_directly_imported_by("gateway.app") >= {"gateway.service", "gateway.transports"}
