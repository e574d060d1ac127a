"""Make a dataset URI readable by bise_core on this worker.

``file://`` and ``builtin:`` URIs are read where they are (the data roots guard file
access). An ``s3://bucket/prefix`` URI is copied first, by the trusted worker process with
its own credentials, into a cache folder that then becomes the only data root: the
sandboxed validator and bise_core never talk to S3 and never see credentials.
"""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from bise_core.errors import DatasetError
from service.settings import Settings
from service.storage import S3Storage, atomic_write
from service.uris import UriError, check_dataset_uri


def _download_s3(uri: str, settings: Settings) -> Path:
    parsed = urlparse(uri)
    bucket, prefix = parsed.netloc, parsed.path.lstrip("/")
    dest = settings.work_dir / "datasets" / hashlib.sha256(uri.encode()).hexdigest()[:24]
    client = S3Storage(bucket, endpoint_url=settings.s3_endpoint_url).client
    found = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            relative = PurePosixPath(key[len(prefix):].lstrip("/") or PurePosixPath(key).name)
            if any(part in ("..", "") for part in relative.parts) or key.endswith("/"):
                continue
            target = dest / relative
            if not (target.is_file() and target.stat().st_size == item["Size"]):
                target.parent.mkdir(parents=True, exist_ok=True)
                with atomic_write(target) as out:
                    client.download_fileobj(bucket, key, out)
            found += 1
    if not found:
        raise DatasetError(f"no objects under {uri}", param="uri")
    return dest


def localise(uri: str, settings: Settings) -> tuple[str, list[Path]]:
    """(URI bise_core can open, data roots to allow for it)."""
    if not uri.startswith("s3://"):
        try:  # checked by the API already; checked again because settings may differ here
            check_dataset_uri(uri, list(settings.data_roots))
        except UriError as exc:
            raise DatasetError(str(exc), param="uri") from None
        return uri, list(settings.data_roots)
    folder = _download_s3(uri, settings)
    entries = list(folder.iterdir())
    target = entries[0] if len(entries) == 1 and entries[0].is_file() else folder
    return target.as_uri(), [folder]
