"""HTTP conditional and range requests for artifact downloads (RFC 9110 §13, §14).

Strong ETags are the artifact's SHA-256, so ``If-None-Match`` and ``If-Range`` work across
API replicas and storage backends; a single byte range is served as 206, anything else a
client could send (multiple ranges, garbage) falls back to the full body as the RFC allows.
"""

from __future__ import annotations

import re
from typing import Iterator

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """(start, end) inclusive, None for "whole body", or "unsatisfiable"."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if not match or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.groups()
    if first == "":  # suffix: the last N bytes
        length = int(last)
        if length == 0:
            return "unsatisfiable"
        return max(0, size - length), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        return "unsatisfiable"
    return start, end


def artifact_response(request: Request, *, size: int, sha256: str, filename: str,
                      chunks: "callable[[int, int | None], Iterator[bytes]]",  # type: ignore[valid-type]
                      media_type: str = "application/octet-stream") -> Response:
    etag = f'"{sha256}"'
    base = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "private, max-age=0, must-revalidate",
            "Content-Disposition": f'attachment; filename="{filename}"'}
    inm = request.headers.get("if-none-match")
    if inm and (inm.strip() == "*" or etag in [t.strip() for t in inm.split(",")]):
        return Response(status_code=304, headers={k: v for k, v in base.items() if k != "Content-Disposition"})
    wanted = parse_range(request.headers.get("range"), size)
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range.strip() != etag:
        wanted = None  # the client's partial copy is stale: send everything
    if wanted == "unsatisfiable":
        return Response(status_code=416, headers={**base, "Content-Range": f"bytes */{size}"})
    if wanted is None:
        return StreamingResponse(chunks(0, None), media_type=media_type,
                                 headers={**base, "Content-Length": str(size)})
    start, end = wanted  # type: ignore[misc]
    return StreamingResponse(chunks(start, end), status_code=206, media_type=media_type,
                             headers={**base, "Content-Range": f"bytes {start}-{end}/{size}",
                                      "Content-Length": str(end - start + 1)})
