"""compose.yaml and the Dockerfile: valid for docker-compose v1, every path of the lab as a service that
starts the way the local lab starts it, healthchecks gating the start order, targets by service name,
and images that hold what compose runs. No Docker engine here: `docker-compose config`, static checks
of the Dockerfile, and each path's container command run on loopback (real nginx, HAProxy, relays)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from loadtests import procs
from loadtests.lab import GATEWAYS, PROXIES

from .support import ROOT, free_port, require

HEALTHY = {"condition": "service_healthy"}
PATH_COMMAND = ["python", "-m", "loadtests", "path"]


@pytest.fixture(scope="module")
def compose() -> dict:
    tool = require("docker-compose")
    out = subprocess.run([tool, "-f", "compose.yaml", "config"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)["services"]


def _upstreams(command: list[str]) -> list[str]:
    return [command[i + 1] for i, arg in enumerate(command) if arg == "--upstream"]


def test_services_cover_the_lab(compose):
    expected = {p.name for p in PROXIES} | set(GATEWAYS) | {"redis", "locust-master", "locust-worker"}
    assert expected <= set(compose), (
        f"compose.yaml has no service for {sorted(expected - set(compose))}: add one like nginx-tuned's "
        "(<<: *path, command: python -m loadtests path NAME --upstream ..., ports: 8000+offset:8080, "
        "depends_on its gateways with condition: service_healthy)")
    for name in ("replica-a", "replica-b"):
        env = compose[name]["environment"]
        assert env["GATEWAY_STREAM_STORE"] == "redis" and env["GATEWAY_REDIS_URL"].startswith("redis://redis:")
    assert compose["gateway-bare"]["environment"]["GATEWAY_X_ACCEL_BUFFERING"] == "false"
    assert "--master" in compose["locust-master"]["command"]
    assert "--worker" in compose["locust-worker"]["command"]


def test_each_path_runs_its_lab_configuration_in_front_of_the_same_gateways(compose):
    for proxy in PROXIES:
        service = compose[proxy.name]
        command = service["command"]
        assert command[:5] == PATH_COMMAND + [proxy.name], f"{proxy.name} runs {command}"
        # Same topology as the local lab: the same gateways behind the same proxy, by service name.
        hosts = [u.rsplit(":", 1)[0] for u in _upstreams(command)]
        assert hosts == list(proxy.upstreams), proxy.name
        assert all(h in compose for h in hosts)
        # Host port as the local lab's (base 8000 + offset); the container listens on 8080.
        ports = [(str(p["published"]), int(p["target"])) for p in service["ports"]]
        assert ports == [(str(8000 + proxy.offset), 8080)], f"{proxy.name}: {ports}"


def test_healthchecks_gate_the_start_order(compose):
    for name in ("gateway", "gateway-bare", "replica-a", "replica-b", "redis"):
        check = compose[name].get("healthcheck")
        assert check and not check.get("disable") and check["test"][0] in ("CMD", "CMD-SHELL"), name
    for name in ("gateway", "gateway-bare", "replica-a", "replica-b"):
        assert "/healthz" in " ".join(compose[name]["healthcheck"]["test"])
    assert "ping" in compose["redis"]["healthcheck"]["test"]
    for name, service in compose.items():
        for dep, how in (service.get("depends_on") or {}).items():
            assert dep in compose, f"{name} depends on {dep}, which is not a service"
            assert how == HEALTHY, f"{name} waits for {dep} only to start: {how} (want service_healthy)"
            assert compose[dep].get("healthcheck") and not compose[dep]["healthcheck"].get("disable"), \
                f"{name} waits for {dep} to be healthy, but {dep} has no healthcheck"
    for proxy in PROXIES:
        assert set(compose[proxy.name]["depends_on"]) == set(proxy.upstreams), proxy.name
    for name in ("replica-a", "replica-b"):
        assert "redis" in compose[name]["depends_on"]


def test_locust_reaches_lab_paths_by_service_name(compose, monkeypatch):
    from loadtests import targets

    for name in ("locust-master", "locust-worker"):
        template = compose[name]["environment"]["LAB_TARGET_URL"]
        monkeypatch.setenv("LAB_TARGET_URL", template)
        host = compose["locust-master"]["command"][compose["locust-master"]["command"].index("--host") + 1]
        assert urlsplit(host).hostname == "gateway"
        assert targets.resolve("gateway", host) == host
        for proxy in PROXIES:
            url = urlsplit(targets.resolve(proxy.name, host))
            # The path's own service and the port it listens on inside compose: not the gateway's port
            # plus an offset (which names nothing in a container network).
            assert (url.scheme, url.hostname, url.port) == ("https" if proxy.tls else "http", proxy.name, 8080)
            assert url.hostname in compose


def test_images_hold_what_compose_runs(compose):
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = {stage: base for base, stage in re.findall(r"^FROM (\S+) AS (\w+)", dockerfile, re.MULTILINE)}
    assert set(stages) == {"server", "lab"}
    copied = {src for line in re.findall(r"^COPY (.+)$", dockerfile, re.MULTILINE) for src in line.split()[:-1]}
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for needed in ("gateway", "loadtests", "lab", "pyproject.toml", "uv.lock", "README.md"):
        assert needed in copied, f"the image does not copy {needed}"
        assert needed not in ignored, f".dockerignore drops {needed}"
    assert "uv sync --locked" in dockerfile and "--extra lab" in dockerfile  # the lock, with the tools
    apt = re.search(r"apt-get install[^\n]*", dockerfile).group(0)
    for package in ("nginx", "haproxy", "redis-server", "openssl", "curl"):
        assert f" {package}" in apt, f"the lab image lacks {package}"
    for name, service in compose.items():
        target = service["build"]["target"]
        assert target in stages and (ROOT / service["build"]["context"] / "Dockerfile").is_file()
        assert service["image"] == ("llm-stream-gateway" if target == "server" else "llm-stream-gateway-lab")
        if target == "server":  # only the gateway itself runs from the small image
            assert service.get("command") in (None, []) and name in GATEWAYS, name
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            assert Path(source).exists(), f"{name} mounts {source}, which does not exist"
        for arg in service.get("command") or []:
            for path in re.findall(r"/app/[\w./-]+\.\w+", arg):
                assert (ROOT / path.removeprefix("/app/")).is_file(), f"{name} uses {path}, not in the image"


def test_images_are_the_debian_release_the_lab_measured():
    """The lab's findings (docs/proxies.md) come from this machine's Debian packages: the images
    install the same release's nginx and HAProxy."""
    release = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
    codename = release.get("VERSION_CODENAME", "").strip('"')
    bases = re.findall(r"^FROM (\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert codename and all(b == "server" or b.endswith(f"-{codename}") for b in bases), (codename, bases)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


@pytest.mark.parametrize("proxy", PROXIES, ids=lambda p: p.name)
def test_each_path_container_command_starts(compose, proxy, tmp_path):
    """The service's own command (`python -m loadtests path ...`), run here with loopback addresses:
    the proxy (real nginx or HAProxy, or the relay) renders its configuration and listens."""
    if proxy.tool != "relay":
        require(proxy.tool)
    if proxy.tls:
        require("openssl")
    command = compose[proxy.name]["command"]
    port = free_port()
    upstreams = ["127.0.0.1:9" for _ in _upstreams(command)]
    argv = [sys.executable, *command[1:5], *sum((["--upstream", u] for u in upstreams), []),
            "--listen", f"127.0.0.1:{port}", "--run-dir", str(tmp_path / "run")]
    proc = procs.spawn(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not _listening(port):
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, f"{proxy.name} did not listen in 20 s"
            time.sleep(0.05)
        if proxy.tool != "relay":
            assert (tmp_path / "run" / Path(proxy.config).name).is_file()
            assert not re.search(r"\$\{[A-Z]", (tmp_path / "run" / Path(proxy.config).name).read_text())
    finally:
        procs.kill_group(proc)
