"""docs/architecture.md lists every module of gateway/, loadtests/ and lab/, one line each, and nothing gone."""

from __future__ import annotations

import re

from .support import ROOT

DOC = ROOT / "docs" / "architecture.md"
PACKAGES = ("gateway", "loadtests", "lab")
ENTRY = re.compile(r"^- `([^`]+)`: \S")  # - `gateway/events.py`: what it is


def modules() -> set[str]:
    """Every .py file (a package by its folder, `gateway/codecs/`, for its __init__.py); __main__.py aside."""
    out = set()
    for top in PACKAGES:
        for path in (ROOT / top).rglob("*.py"):
            rel = path.relative_to(ROOT)
            if path.name == "__main__.py" or any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
                continue
            out.add(f"{rel.parent}/" if path.name == "__init__.py" else str(rel))
    return out


def listed() -> dict[str, int]:
    return {m.group(1): n for n, line in enumerate(DOC.read_text().splitlines(), 1) if (m := ENTRY.match(line))}


def test_every_module_is_listed():
    missing = sorted(modules() - set(listed()))
    section = {top: f"## {top}/" for top in PACKAGES}
    assert not missing, "docs/architecture.md does not list these modules; add one line each:\n" + "\n".join(
        f"  under '{section[m.split('/')[0]]}': - `{m}`: <what it is, in one line>" for m in missing)


def test_nothing_listed_is_gone():
    gone = sorted(m for m, n in listed().items() if not (ROOT / m).exists())
    assert not gone, "docs/architecture.md lists modules that do not exist; remove (or rename) these lines:\n" + \
        "\n".join(f"  line {listed()[m]}: - `{m}`" for m in gone)


def test_listed_once():
    lines = [m.group(1) for line in DOC.read_text().splitlines() if (m := ENTRY.match(line))]
    twice = sorted({m for m in lines if lines.count(m) > 1})
    assert not twice, f"docs/architecture.md lists these more than once: {twice}"
