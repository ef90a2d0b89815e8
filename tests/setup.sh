#!/usr/bin/env bash
# Install what the tests need on a fresh Debian machine (idempotent): the Debian packages the tests start
# (nginx, HAProxy, Redis, Chromium, docker-compose for `config`) and uv, which installs the Python packages
# from uv.lock when the README's test command runs (`uv run --locked`).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(nginx haproxy redis-server chromium docker-compose iproute2 openssl)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The tests start their own nginx, haproxy and redis on free ports: stop the distro's services.
for svc in nginx haproxy redis-server; do
  (command -v systemctl >/dev/null && systemctl stop "$svc" 2>/dev/null) || service "$svc" stop >/dev/null 2>&1 || true
done

command -v uv >/dev/null || python3 -m pip install -q --disable-pip-version-check uv
