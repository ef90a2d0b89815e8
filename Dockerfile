# Two images from one file, both on Debian bookworm, the release the lab's findings were measured on
# (nginx 1.22.1, HAProxy 2.6.12, Redis 7.0: docs/proxies.md):
#   server: the gateway (`python -m gateway serve`), installed from uv.lock with no extras;
#   lab:    the server plus the tools (`lab`, `probe`, `compare`, Locust: the lab extra) and Debian's
#           nginx, HAProxy, redis-server and openssl. compose.yaml runs the proxies, Redis and Locust
#           from it, and `docker-compose run --rm locust-master python -m gateway compare` works in it.
FROM python:3.11-slim-bookworm AS server
ENV UV_PROJECT_ENVIRONMENT=/venv UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 GATEWAY_HOST=0.0.0.0
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
COPY gateway ./gateway
COPY loadtests ./loadtests
COPY lab ./lab
RUN uv sync --locked --no-cache
EXPOSE 8000
CMD ["python", "-m", "gateway", "serve"]

FROM server AS lab
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx haproxy redis-server openssl curl \
    && rm -rf /var/lib/apt/lists/*
RUN uv sync --locked --no-cache --extra lab
