"""Where the load goes: a base URL, or a path of the proxy lab by name.

`python -m gateway lab --port P` puts the direct gateway on P and each proxy
path on P + its offset (nginx-tuned on P + 3, ...). So with `--host` the lab's
gateway, `--target nginx-tuned` is the same load through tuned nginx.

In containers (compose.yaml) each path is a service of its own name, so there
the names resolve through `LAB_TARGET_URL`, a template such as
`{scheme}://{name}:8080` (scheme: https for the TLS paths), never by port offset.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

__all__ = ["resolve", "lab_paths"]


def lab_paths() -> dict[str, tuple[int, bool]]:
    """Lab path name -> (port offset from the lab's gateway, TLS)."""
    from loadtests.lab import PROXIES

    return {"gateway": (0, False), **{p.name: (p.offset, p.tls) for p in PROXIES}}


def resolve(target: str, host: str | None) -> str:
    """The base URL to load: `target` if it is a URL, a lab path on `host`'s lab, else `host`."""
    target, host = (target or "").strip(), (host or "").strip()
    if not target:
        if "://" not in host:
            raise ValueError("no target: pass --host (or --target) with the gateway's base URL")
        return host.rstrip("/")
    if "://" in target:
        return target.rstrip("/")
    paths = lab_paths()
    if target not in paths:
        raise ValueError(f"--target {target!r} is neither a URL nor a lab path ({', '.join(paths)})")
    offset, tls = paths[target]
    template = os.environ.get("LAB_TARGET_URL", "").strip()
    if template:
        if target == "gateway" and "://" in host:
            return host.rstrip("/")
        return template.format(name=target, scheme="https" if tls else "http").rstrip("/")
    base = urlsplit(host)
    if not base.scheme or base.port is None:
        raise ValueError(f"--target {target!r} names a lab path: --host must be the lab's gateway with its port")
    return f"{'https' if tls else base.scheme}://{base.hostname}:{base.port + offset}"
