"""Standard Webhooks signing, verification and delivery (service/webhooks.py)."""

from __future__ import annotations

import base64
import json
import random
from service.embedded import free_port
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest

from service.webhooks import (
    DeliveryResult,
    WebhookVerificationError,
    backoff_seconds,
    deliver,
    headers_for,
    new_secret,
    sign,
    verify,
)

# The published test vector of the Standard Webhooks specification (and its reference libraries).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def vector_headers(signature: str = VECTOR_SIGNATURE) -> dict[str, str]:
    return {"webhook-id": VECTOR_ID, "webhook-timestamp": str(VECTOR_TS), "webhook-signature": signature}


# --------------------------------------------------------------------------- signing


def test_sign_matches_the_standard_webhooks_vector() -> None:
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_SIGNATURE


def test_verify_accepts_the_vector() -> None:
    verify(VECTOR_SECRET, vector_headers(), VECTOR_BODY, now=VECTOR_TS + 10)


def test_new_secret_format() -> None:
    a, b = new_secret(), new_secret()
    assert a != b
    assert a.startswith("whsec_")
    assert len(base64.b64decode(a[len("whsec_"):], validate=True)) == 24
    assert len(a) <= 100  # fits projects.webhook_secret


def test_headers_for_round_trip() -> None:
    secret = new_secret()
    body = b'{"type":"job.succeeded"}'
    headers = headers_for(secret, "msg_abc", body)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature", "content-type"}
    assert headers["content-type"] == "application/json"
    assert headers["webhook-id"] == "msg_abc"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    verify(secret, headers, body)
    fixed = headers_for(secret, "msg_abc", body, timestamp=1700000000)
    assert fixed["webhook-timestamp"] == "1700000000"
    assert fixed["webhook-signature"] == sign(secret, "msg_abc", 1700000000, body)


def test_verify_header_names_are_case_insensitive() -> None:
    headers = {k.title(): v for k, v in vector_headers().items()}
    verify(VECTOR_SECRET, headers, VECTOR_BODY, now=VECTOR_TS)


def test_verify_accepts_any_of_several_signatures() -> None:
    other = sign(new_secret(), VECTOR_ID, VECTOR_TS, VECTOR_BODY)
    verify(VECTOR_SECRET, vector_headers(f"{other} v2,abc {VECTOR_SIGNATURE}"), VECTOR_BODY, now=VECTOR_TS)


# --------------------------------------------------------------------------- rejections


def test_tampered_body_rejected() -> None:
    with pytest.raises(WebhookVerificationError):
        verify(VECTOR_SECRET, vector_headers(), b'{"test": 2432232315}', now=VECTOR_TS)


def test_wrong_secret_rejected() -> None:
    with pytest.raises(WebhookVerificationError):
        verify(new_secret(), vector_headers(), VECTOR_BODY, now=VECTOR_TS)


def test_other_msg_id_rejected() -> None:
    headers = vector_headers() | {"webhook-id": "msg_other"}
    with pytest.raises(WebhookVerificationError):
        verify(VECTOR_SECRET, headers, VECTOR_BODY, now=VECTOR_TS)


@pytest.mark.parametrize("offset", [-301, 301, -3600, 10**6])
def test_stale_or_future_timestamp_rejected(offset: int) -> None:
    with pytest.raises(WebhookVerificationError, match="timestamp"):
        verify(VECTOR_SECRET, vector_headers(), VECTOR_BODY, now=VECTOR_TS - offset)


def test_tolerance_is_configurable() -> None:
    verify(VECTOR_SECRET, vector_headers(), VECTOR_BODY, now=VECTOR_TS + 1000, tolerance_seconds=2000)
    with pytest.raises(WebhookVerificationError):
        verify(VECTOR_SECRET, vector_headers(), VECTOR_BODY, now=VECTOR_TS + 10, tolerance_seconds=5)


def test_default_now_is_the_clock() -> None:
    with pytest.raises(WebhookVerificationError, match="timestamp"):
        verify(VECTOR_SECRET, vector_headers(), VECTOR_BODY)  # signed in 2021


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_rejected(missing: str) -> None:
    headers = vector_headers()
    del headers[missing]
    with pytest.raises(WebhookVerificationError):
        verify(VECTOR_SECRET, headers, VECTOR_BODY, now=VECTOR_TS)


@pytest.mark.parametrize(
    "headers",
    [
        vector_headers() | {"webhook-timestamp": "yesterday"},
        vector_headers("g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),  # no version
        vector_headers("v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),  # wrong version
        vector_headers("v1,"),
        vector_headers("v1,not base64 at all"),
    ],
)
def test_malformed_headers_rejected(headers: dict[str, str]) -> None:
    with pytest.raises(WebhookVerificationError):
        verify(VECTOR_SECRET, headers, VECTOR_BODY, now=VECTOR_TS)


# --------------------------------------------------------------------------- backoff


def test_backoff_is_exponential_and_capped() -> None:
    for attempt in range(1, 8):
        delay = backoff_seconds(attempt, 2.0)
        nominal = 2.0 * 2 ** (attempt - 1)
        assert nominal <= delay <= nominal * 1.1 + 1e-9
    assert backoff_seconds(40, 2.0) <= 3600.0
    assert backoff_seconds(10_000, 2.0) <= 3600.0
    assert backoff_seconds(12, 2.0) >= 3600.0 * 0.9


def test_backoff_jitter_is_deterministic_with_rng() -> None:
    a = [backoff_seconds(n, 1.5, random.Random(7)) for n in range(1, 6)]
    b = [backoff_seconds(n, 1.5, random.Random(7)) for n in range(1, 6)]
    assert a == b
    assert a == sorted(a)


# --------------------------------------------------------------------------- delivery


class _Receiver(BaseHTTPRequestHandler):
    """Answers ``server.status``; records each request; checks the signature with ``server.secret``."""

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        server = self.server
        record = {"headers": dict(self.headers.items()), "body": body, "verified": False}
        try:
            verify(server.secret, {k.lower(): v for k, v in self.headers.items()}, body)
            record["verified"] = True
        except WebhookVerificationError as exc:
            record["error"] = str(exc)
        server.received.append(record)
        status = server.status if record["verified"] else 401
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass


def _serve(status: int, secret: str) -> tuple[ThreadingHTTPServer, threading.Thread]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.status = status  # type: ignore[attr-defined]
    server.secret = secret  # type: ignore[attr-defined]
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[ThreadingHTTPServer]:
    status = getattr(request, "param", 200)
    server, thread = _serve(status, new_secret())
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _url(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/hooks/bise"


def test_deliver_signed_payload_to_a_real_server(receiver: ThreadingHTTPServer) -> None:
    payload = {"type": "job.succeeded", "data": {"id": "job_1", "status": "succeeded", "metrics": {"acc": 0.9}}}
    result = deliver(_url(receiver), "msg_deliver1", payload, receiver.secret, timeout=5.0)
    assert result == DeliveryResult(ok=True, status_code=200, error=None)
    (record,) = receiver.received
    assert record["verified"], record.get("error")
    headers = {k.lower(): v for k, v in record["headers"].items()}
    assert headers["webhook-id"] == "msg_deliver1"
    assert headers["content-type"] == "application/json"
    # compact, sorted-keys JSON: the bytes that were signed are the bytes that were sent
    assert record["body"] == json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    assert json.loads(record["body"]) == payload


def test_deliver_with_wrong_secret_is_refused_by_the_receiver(receiver: ThreadingHTTPServer) -> None:
    result = deliver(_url(receiver), "msg_bad", {"a": 1}, new_secret(), timeout=5.0)
    assert result.ok is False and result.status_code == 401
    assert receiver.received and receiver.received[0]["verified"] is False


@pytest.mark.parametrize("receiver", [500], indirect=True)
def test_deliver_server_error_is_not_ok(receiver: ThreadingHTTPServer) -> None:
    result = deliver(_url(receiver), "msg_500", {"a": 1}, receiver.secret, timeout=5.0)
    assert result.ok is False
    assert result.status_code == 500
    assert result.error and "500" in result.error


@pytest.mark.parametrize("receiver", [204], indirect=True)
def test_deliver_any_2xx_is_ok(receiver: ThreadingHTTPServer) -> None:
    result = deliver(_url(receiver), "msg_204", {"a": 1}, receiver.secret, timeout=5.0)
    assert result == DeliveryResult(ok=True, status_code=204, error=None)


def test_deliver_unreachable_port_returns_error() -> None:
    result = deliver(f"http://127.0.0.1:{free_port()}/hook", "msg_x", {"a": 1}, new_secret(), timeout=2.0)
    assert result.ok is False
    assert result.status_code is None
    assert result.error


def test_deliver_bad_url_never_raises() -> None:
    result = deliver("not a url", "msg_y", {"a": 1}, new_secret(), timeout=1.0)
    assert result.ok is False and result.status_code is None and result.error
