"""A Server-Sent Events reader that survives dropped connections.

It remembers the last event id and reconnects with ``Last-Event-ID``, which the service
answers by replaying everything after it from its events table: a reader sees every event
exactly once, in order, however often the network drops.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Iterator

import httpx

RECONNECT_ERRORS = (httpx.TransportError, httpx.RemoteProtocolError)


def parse_events(lines: Iterator[str]) -> Iterator[tuple[str | None, dict[str, Any]]]:
    """(id, data) for each complete SSE message in ``lines``."""
    event_id: str | None = None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield event_id, json.loads("\n".join(data))
            event_id, data = None, []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "id":
                event_id = value
            elif field == "data":
                data.append(value)


def follow(open_stream: Callable[[int | None], Any], last_id: int | None = None, *, max_retries: int = 50,
           backoff: float = 0.5, is_done: Callable[[dict[str, Any]], bool] = lambda e: False,
           on_reconnect: Callable[[int | None, Exception], None] | None = None) -> Iterator[dict[str, Any]]:
    """Events from ``open_stream(last_id)`` (a context manager yielding an httpx Response),
    reconnecting after a drop, until the server ends the stream or ``is_done(event)``."""
    failures = 0
    while True:
        received = False
        try:
            with open_stream(last_id) as response:
                response.raise_for_status()
                for event_id, event in parse_events(response.iter_lines()):
                    failures, received = 0, True
                    if event_id is not None:
                        last_id = int(event_id)
                    yield event
                    if is_done(event):
                        return
            # A clean close means "nothing more" only when it follows an empty replay: a server
            # shutting down (a deploy) also closes streams cleanly, so ask once more from last_id.
            if not received:
                return
        except RECONNECT_ERRORS as exc:
            failures += 1
            if failures > max_retries:
                raise
            if on_reconnect is not None:
                on_reconnect(last_id, exc)
            time.sleep(min(backoff * 2 ** (failures - 1), 10.0))
