"""Streamed multipart upload: the file part goes to disk chunk by chunk, hashed on the way.

Starlette's ``request.form()`` would spool the whole file before the handler sees it and has
no total size cap; this parser writes as bytes arrive, stops at ``max_bytes`` (413) and keeps
memory flat whatever the file size.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from api.errors import ApiError, field_error

FIELD_LIMIT = 64 * 1024
MULTIPART_OVERHEAD = 64 * 1024


@dataclass
class Upload:
    path: Path | None = None
    filename: str | None = None
    size: int = 0
    sha256: str = ""
    fields: dict[str, str] = field(default_factory=dict)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the file is larger than the upload limit of {limit} bytes", code="file_too_large",
                    errors=[field_error("file", f"larger than {limit} bytes", "file_too_large")])


def safe_filename(name: str | None) -> str:
    base = os.path.basename((name or "").replace("\\", "/"))
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base)[:200].lstrip(".")
    return base or "model"


class _Collector:
    """Callbacks for python-multipart: route each part to a file or a small field buffer."""

    def __init__(self, spool_dir: Path, max_bytes: int, file_field: str) -> None:
        self.spool_dir, self.max_bytes, self.file_field = spool_dir, max_bytes, file_field
        self.upload = Upload()
        self.exceeded = False
        self.error: ApiError | None = None
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._buffer = bytearray()
        self._file = None
        self._hash = hashlib.sha256()

    def on_part_begin(self) -> None:
        self._headers, self._name, self._buffer = {}, None, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if self._name == self.file_field:
            if self.upload.path is not None:
                self.error = ApiError(422, "send exactly one file part", code="invalid_request",
                                      errors=[field_error(self.file_field, "more than one file part")])
                return
            self.upload.filename = options.get(b"filename", b"").decode("utf-8", "replace") or None
            fd, name = tempfile.mkstemp(dir=self.spool_dir, prefix="upload-")
            self._file = os.fdopen(fd, "wb")
            self.upload.path = Path(name)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._name == self.file_field and self._file is not None:
            self.upload.size += len(chunk)
            if self.upload.size > self.max_bytes:
                self.exceeded = True
                return
            self._hash.update(chunk)
            self._file.write(chunk)
        elif len(self._buffer) + len(chunk) <= FIELD_LIMIT:
            self._buffer += chunk
        else:
            self.error = ApiError(422, f"form field {self._name!r} is longer than {FIELD_LIMIT} bytes",
                                  code="invalid_request", errors=[field_error(self._name or "form", "too long")])

    def on_part_end(self) -> None:
        if self._name == self.file_field and self._file is not None:
            self._file.close()
            self._file = None
        elif self._name:
            self.upload.fields[self._name] = self._buffer.decode("utf-8", "replace")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self.upload.sha256 = self._hash.hexdigest()


async def receive_upload(request: Request, spool_dir: Path, max_bytes: int, file_field: str = "file") -> Upload:
    """Read a multipart body; return the spooled file and the other fields.

    Raises 413 as soon as the declared or received size passes ``max_bytes`` (the partial
    file is removed), 415 for a body that is not multipart/form-data, 422 without a file.
    """
    ctype, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise ApiError(415, "send the model as multipart/form-data with a 'file' part", code="unsupported_media_type",
                       errors=[field_error("Content-Type", "expected multipart/form-data", location="header")])
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + MULTIPART_OVERHEAD:
        raise _too_large(max_bytes)
    spool_dir.mkdir(parents=True, exist_ok=True)
    collector = _Collector(spool_dir, max_bytes, file_field)
    callbacks = {name: getattr(collector, name) for name in (
        "on_part_begin", "on_header_field", "on_header_value", "on_header_end", "on_headers_finished",
        "on_part_data", "on_part_end")}
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if collector.exceeded:
                raise _too_large(max_bytes)
            if collector.error is not None:
                raise collector.error
        parser.finalize()
    except ApiError:
        collector.close()
        discard(collector.upload)
        raise
    except Exception as exc:  # malformed multipart
        collector.close()
        discard(collector.upload)
        raise ApiError(400, f"malformed multipart body: {exc}", code="malformed_body") from None
    collector.close()
    if collector.upload.path is None:
        raise ApiError(422, "the multipart body has no 'file' part", code="invalid_request",
                       errors=[field_error(file_field, "field required", "missing")])
    return collector.upload


def discard(upload: Upload) -> None:
    if upload.path is not None:
        upload.path.unlink(missing_ok=True)
