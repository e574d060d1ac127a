"""Webhook signing, verification and delivery per the Standard Webhooks scheme.

See https://www.standardwebhooks.com: every delivery carries ``webhook-id`` (the message id,
stable across retries so receivers can de-duplicate), ``webhook-timestamp`` (Unix seconds) and
``webhook-signature`` (``v1,<base64 HMAC-SHA256>``, several space-separated during a secret
rotation). The signed content is ``f"{msg_id}.{timestamp}."`` followed by the raw body, and the
HMAC key is the base64-decoded part of the secret after its ``whsec_`` prefix.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import random
import secrets
import time
from dataclasses import dataclass
from typing import Any, Mapping

import httpx

__all__ = [
    "SECRET_PREFIX",
    "SIGNATURE_VERSION",
    "MAX_BACKOFF_SECONDS",
    "DeliveryResult",
    "WebhookVerificationError",
    "new_secret",
    "sign",
    "verify",
    "headers_for",
    "encode_payload",
    "deliver",
    "backoff_seconds",
]

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
MAX_BACKOFF_SECONDS = 3600.0
USER_AGENT = "bise-webhooks/1"


class WebhookVerificationError(Exception):
    """A delivery whose headers, timestamp or signature do not check out."""


@dataclass(frozen=True)
class DeliveryResult:
    """Outcome of one delivery attempt: ``ok`` for a 2xx answer."""

    ok: bool
    status_code: int | None = None
    error: str | None = None


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` + base64 of 24 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode("ascii")


def _secret_key(secret: str) -> bytes:
    raw = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("webhook secret is not valid base64 after the whsec_ prefix") from exc
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def _signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value: ``v1,<base64 HMAC-SHA256>``."""
    return f"{SIGNATURE_VERSION},{_signature(_secret_key(secret), msg_id, int(timestamp), body)}"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        # plain dicts are case-sensitive; HTTP header names are not
        for k, v in headers.items():
            if k.lower() == name:
                return v
    return value


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_seconds: int = 300,
    now: float | None = None,
) -> None:
    """Check a delivery; raise :class:`WebhookVerificationError` unless it is authentic and fresh."""
    msg_id = _header(headers, "webhook-id")
    ts_text = _header(headers, "webhook-timestamp")
    sig_header = _header(headers, "webhook-signature")
    if not msg_id or not ts_text or not sig_header:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        timestamp = int(ts_text.strip())
    except ValueError as exc:
        raise WebhookVerificationError("invalid webhook-timestamp header") from exc
    current = time.time() if now is None else now
    if timestamp < current - tolerance_seconds:
        raise WebhookVerificationError("message timestamp too old")
    if timestamp > current + tolerance_seconds:
        raise WebhookVerificationError("message timestamp too new")
    try:
        key = _secret_key(secret)
    except ValueError as exc:
        raise WebhookVerificationError(str(exc)) from exc
    expected = _signature(key, msg_id, timestamp, body)
    for candidate in sig_header.split():
        version, sep, value = candidate.partition(",")
        if sep and version == SIGNATURE_VERSION and hmac.compare_digest(value.encode(), expected.encode()):
            return
    raise WebhookVerificationError("no matching signature found")


def headers_for(secret: str, msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The headers of a signed delivery of ``body`` (the exact bytes that will be sent)."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, msg_id, ts, body),
        "content-type": "application/json",
    }


def encode_payload(payload: Mapping[str, Any]) -> bytes:
    """The one serialisation of a payload: compact JSON with sorted keys, UTF-8."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False, default=str).encode()


def deliver(url: str, msg_id: str, payload: dict[str, Any], secret: str, timeout: float) -> DeliveryResult:
    """POST one signed delivery; a 2xx answer is success. Network errors are returned, never raised."""
    try:
        body = encode_payload(payload)
        headers = headers_for(secret, msg_id, body)
        headers["user-agent"] = USER_AGENT
    except (TypeError, ValueError) as exc:
        return DeliveryResult(ok=False, status_code=None, error=f"cannot sign payload: {exc}")
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as client:
            response = client.post(url, content=body, headers=headers)
    except Exception as exc:  # noqa: BLE001 - a bad URL or anything else must not kill the worker
        detail = str(exc).strip()
        return DeliveryResult(ok=False, status_code=None, error=f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__)
    status = response.status_code
    if 200 <= status < 300:
        return DeliveryResult(ok=True, status_code=status, error=None)
    return DeliveryResult(ok=False, status_code=status, error=f"HTTP {status}")


def backoff_seconds(attempt: int, base: float, rng: random.Random | None = None) -> float:
    """Delay before retry number ``attempt`` (1-based): ``base * 2**(attempt-1)``, capped at one
    hour, plus up to 10% jitter (deterministic when ``rng`` is a seeded :class:`random.Random`)."""
    attempt = max(1, int(attempt))
    delay = min(MAX_BACKOFF_SECONDS, base * 2.0 ** min(attempt - 1, 62))
    jitter = (rng if rng is not None else random).uniform(0.0, 0.1) * delay
    return min(MAX_BACKOFF_SECONDS, delay + jitter)
