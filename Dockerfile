# The gateway image (also runs the Locust master and workers in compose.yaml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install --no-cache-dir '.[lab]'
ENV GATEWAY_HOST=0.0.0.0
EXPOSE 8000
CMD ["python", "-m", "gateway", "serve"]
