"""compose.yaml: valid for docker-compose, every file it references exists, and it runs the
same lab configurations as `python -m gateway lab` (no Docker engine here: config-level checks,
plus the nginx and HAProxy configurations rendered the way the containers render them)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from loadtests.lab import GATEWAYS, LAB_DIR, PROXIES, VARIABLES

from .support import ROOT, free_port, require


@pytest.fixture(scope="module")
def compose() -> dict:
    tool = require("docker-compose")
    out = subprocess.run([tool, "-f", "compose.yaml", "config"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)["services"]


def _placeholders(config: str) -> set[str]:
    return set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)\}", (LAB_DIR / config).read_text()))


def test_services_cover_the_lab(compose):
    expected = {p.name for p in PROXIES} | set(GATEWAYS) | {"redis", "locust-master", "locust-worker"}
    assert expected <= set(compose)
    for name in ("replica-a", "replica-b"):
        env = compose[name]["environment"]
        assert env["GATEWAY_STREAM_STORE"] == "redis" and env["GATEWAY_REDIS_URL"].startswith("redis://redis:")
    assert compose["gateway-bare"]["environment"]["GATEWAY_X_ACCEL_BUFFERING"] == "false"
    assert "--master" in compose["locust-master"]["command"]
    assert "--worker" in compose["locust-worker"]["command"]


def test_every_referenced_file_exists(compose):
    for name, service in compose.items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            assert Path(source).exists(), f"{name} mounts {source}, which does not exist"
        if "build" in service:
            context = Path(service["build"]["context"])
            assert (context / service["build"].get("dockerfile", "Dockerfile")).is_file()
        # Paths inside the containers that come from a mount: map them back to the repository.
        for arg in service.get("command") or []:
            for path in re.findall(r"/(?:lab|app/loadtests)/[\w./-]+\.\w+", arg):
                local = ROOT / path.removeprefix("/app/").lstrip("/")
                assert local.is_file(), f"{name} uses {path}: {local} does not exist"


def test_proxies_use_the_lab_files_with_every_placeholder_set(compose):
    for proxy in PROXIES:
        service = compose[proxy.name]
        env = service["environment"]
        folder = Path(proxy.config).parent.name
        assert any(str(LAB_DIR / folder) == (v["source"] if isinstance(v, dict) else v.split(":")[0])
                   for v in service["volumes"]), f"{proxy.name} does not mount lab/{folder}"
        used = env.get("CONF") if proxy.tool == "nginx" else service["command"][-1].rsplit("/", 1)[-1]
        assert used == Path(proxy.config).name, f"{proxy.name} runs {used}, the lab runs {proxy.config}"
        assert _placeholders(proxy.config) <= set(env), f"{proxy.name} leaves a placeholder unset"
        assert set(_placeholders(proxy.config)) <= set(VARIABLES)
        # Same topology as the local lab: the same gateways behind the same proxy.
        upstreams = [env[k].split(":")[0] for k in ("UPSTREAM", "UPSTREAM_B") if k in env]
        assert upstreams == list(proxy.upstreams), proxy.name


def _as_container(env: dict, tmp: Path) -> dict:
    """The service's environment, with loopback addresses (no compose network here)."""
    return {**os.environ, **{k: str(v) for k, v in env.items()}, "LISTEN": f"127.0.0.1:{free_port()}",
            "UPSTREAM": "127.0.0.1:9", "UPSTREAM_B": "127.0.0.1:9", "RUN_DIR": str(tmp)}


@pytest.mark.parametrize("name", [p.name for p in PROXIES if p.tool == "nginx"])
def test_nginx_containers_render_a_valid_configuration(compose, name, tmp_path):
    nginx = require("nginx")
    require("envsubst")
    service = compose[name]
    script = service["command"][-1]
    # The container's own envsubst call, on the mounted file.
    envsubst = shlex.split(script.split("<")[0])
    assert envsubst[0] == "envsubst"
    env = _as_container(service["environment"], tmp_path)
    rendered = subprocess.run(envsubst, input=(LAB_DIR / "nginx" / env["CONF"]).read_text(), env=env,
                              capture_output=True, text=True, check=True).stdout
    assert not re.search(r"\$\{[A-Z]", rendered)
    conf = tmp_path / "nginx.conf"
    conf.write_text(rendered)
    check = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(conf), "-e", "stderr"],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("name", [p.name for p in PROXIES if p.tool == "haproxy"])
def test_haproxy_containers_read_the_placeholders_from_their_environment(compose, name, tmp_path):
    haproxy = require("haproxy")
    service = compose[name]
    config = service["command"][-1].replace("/lab/", f"{LAB_DIR}/")
    env = _as_container(service["environment"], tmp_path)
    check = subprocess.run([haproxy, "-c", "-f", config], env=env, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
