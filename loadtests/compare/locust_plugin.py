"""Loaded next to the project's locustfile (`-f loadtests/locustfile.py,<this file>`) by `compare`.

At quit, after the runner stopped, it writes what Locust's own outputs leave
out or write late: the failure messages (gaps, duplicates, cut streams) and
whether Locust warned that its CPU was the bottleneck. Locust's CSV files are
rewritten once a second and not at quit, so their last second can be missing;
this file and `--json-file` are final.
"""

from __future__ import annotations

import json
import os

from locust import events

_env = None


@events.init.add_listener
def _remember(environment, **_kw):
    global _env
    _env = environment


@events.quit.add_listener
def _dump(exit_code, **_kw):
    path = os.environ.get("GATEWAY_COMPARE_EXTRA")
    if not path or _env is None or _env.runner is None:
        return
    runner = _env.runner
    out = {
        "exit_code": exit_code,
        "errors": list(runner.stats.serialize_errors().values()),
        "cpu_warning_emitted": bool(getattr(runner, "cpu_warning_emitted", False)),
        "user_count": runner.user_count,
    }
    with open(path, "w") as f:
        json.dump(out, f)
