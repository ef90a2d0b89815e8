"""API keys and attach tokens.

A request names its key with `Authorization: Bearer <key>`. Browsers cannot
set headers on EventSource or WebSocket, so `POST /v1/streams` also returns a
short-lived attach token (in the attach URLs, `?token=`): an HMAC over the
stream id, the key id and an expiry, good for that one stream only. Secrets
are compared in constant time and never logged; logs carry the key id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import time
from pathlib import Path

from .limits import Bucket
from .problems import Problem
from .settings import Settings

__all__ = ["Auth", "Unauthorized", "RedactTokens", "redact", "install_log_filters", "QuietDenials", "check_expiry"]


class Unauthorized(Problem):
    def __init__(self, detail: str) -> None:
        super().__init__(401, "Unauthorized", detail, code="unauthorized",
                         headers={"WWW-Authenticate": 'Bearer realm="gateway"'})


def check_expiry(expires: float) -> None:
    """Raise once an attach token's time is up (checked on every use, not only at connect)."""
    if expires < time.time():
        raise Unauthorized("attach token expired: ask GET /v1/streams/{id} for a new one")


_TOKEN_IN_URL = re.compile(r"([?&]token=)[^&\s\"']+")


def redact(text: str) -> str:
    """Attach tokens out of a URL or log line (`?token=<redacted>`)."""
    return _TOKEN_IN_URL.sub(r"\1<redacted>", text) if "token=" in text else text


class RedactTokens(logging.Filter):
    """A logging filter for the servers' access and WebSocket lines, which carry the query string."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            try:
                message = record.getMessage()
            except Exception:
                return True
            if "token=" in message:
                record.msg, record.args = redact(message), None
        elif isinstance(record.msg, str) and "token=" in record.msg:
            record.msg = redact(record.msg)
        return True


class QuietDenials(logging.Filter):
    """Refused WebSocket upgrades (a denial response before accept) are the client's business: uvicorn
    logs each at INFO plus an ERROR ("returned without completing handshake"). Here they are INFO,
    and at most `rate` such lines a second (burst twice that) get through: no log flooding."""

    _LINES = ("connection rejected", "ASGI callable returned without completing handshake")

    def __init__(self, rate: float = 5.0) -> None:
        super().__init__()
        self.bucket = Bucket(rate, 2 * rate, time.monotonic())
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else ""
        denial = message.startswith(self._LINES) or (
            message.startswith('%s - "WebSocket %s" ') and not message.endswith("[accepted]"))
        if not denial:
            return True
        if record.levelno > logging.INFO:
            record.levelno, record.levelname = logging.INFO, "INFO"
        if self.bucket.take(time.monotonic()):
            self.dropped += 1
            return False
        return True


# The loggers whose lines carry request targets, by server.
REQUEST_LOGGERS = ("uvicorn.error", "uvicorn.access", "hypercorn.error", "hypercorn.access",
                   "granian.access", "_granian")


def install_log_filters() -> None:
    """Tokens out of the servers' request lines; refused upgrades at INFO, rate limited."""
    for name in REQUEST_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, QuietDenials) for f in logger.filters):
        logger.addFilter(QuietDenials())


def _entries(settings: Settings) -> list[str]:
    out = [e for e in settings.api_keys.split(",")]
    if settings.api_keys_file:
        out += Path(settings.api_keys_file).read_text().splitlines()
    return [e.strip() for e in out if e.strip() and not e.strip().startswith("#")]


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Auth:
    """Who is asking: a key id, or None when auth is off (every stream then has owner None)."""

    def __init__(self, settings: Settings) -> None:
        keys: list[tuple[bytes, str]] = []
        for entry in _entries(settings):
            name, sep, secret = entry.partition("=")
            if not sep:
                name, secret = "key-" + _digest(entry).hex()[:10], entry
            keys.append((_digest(secret), name.strip()))
        self.keys = keys
        self.enabled = bool(keys)
        if self.enabled and "*" in settings.allowed_origins:
            raise ValueError("allowed_origins must list origins, not '*', when API keys are set")
        if self.enabled and settings.stream_store != "memory" and not settings.token_secret:
            raise ValueError(
                "GATEWAY_TOKEN_SECRET is required with API keys and a shared stream store: replicas must "
                "share it, or an attach token from one is refused by the others (set the same random "
                "value, e.g. `openssl rand -hex 32`, on every replica)")
        self.ttl = settings.attach_token_ttl_s
        self._secret = (settings.token_secret or secrets.token_hex(32)).encode()

    def key_id(self, authorization: bytes | None) -> str | None:
        """The key id for an `Authorization` header value; raises Unauthorized."""
        if not self.enabled:
            return None
        if authorization is None:
            raise Unauthorized("an API key is required: Authorization: Bearer <key>")
        scheme, _, secret = authorization.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthorized("use Authorization: Bearer <key>")
        digest = _digest(secret.strip())
        found = None
        for known, name in self.keys:  # no early exit: the time does not depend on which key matched
            if hmac.compare_digest(digest, known):
                found = name
        if found is None:
            raise Unauthorized("unknown API key")
        return found

    # -- attach tokens --------------------------------------------------------

    def token(self, stream_id: str, key_id: str | None) -> str:
        expires = int(time.time() + self.ttl)
        payload = f"{expires}.{key_id or ''}"
        return f"{_b64(payload.encode())}.{self._sign(stream_id, payload)}"

    def check_token(self, token: str, stream_id: str) -> tuple[str | None, float]:
        """(the key id a token was issued to, its expiry time) for this stream only; raises Unauthorized."""
        head, _, mac = token.partition(".")
        try:
            payload = base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)).decode()
            expires_s, _, key_id = payload.partition(".")
            if not (expires_s.isascii() and expires_s.isdigit()):
                raise ValueError(expires_s)
            expires = int(expires_s)
        except ValueError:
            raise Unauthorized("malformed attach token") from None
        if not hmac.compare_digest(mac.encode(), self._sign(stream_id, payload).encode()):
            raise Unauthorized("invalid attach token")
        check_expiry(expires)
        return key_id or None, expires

    def _sign(self, stream_id: str, payload: str) -> str:
        return _b64(hmac.new(self._secret, f"{stream_id}.{payload}".encode(), hashlib.sha256).digest()[:20])
