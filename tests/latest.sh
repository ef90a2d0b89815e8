#!/usr/bin/env bash
# The tests against the newest releases of every dependency (not the lock): drift shows here before users
# meet it. Not part of CI's default run. A temporary venv; the lock and .venv are left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cp -r pyproject.toml README.md gateway tests "$work/" 2>/dev/null
[ -d loadtests ] && cp -r loadtests "$work/"; [ -d lab ] && cp -r lab "$work/"
cd "$work" && uv lock -q --upgrade && uv run --extra test python -m pytest "$@"
