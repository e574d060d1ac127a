"""The configured artifact store (one per process), built from ``BISE_STORAGE_URL``."""

from __future__ import annotations

from functools import lru_cache

from service.settings import get_settings
from service.storage import Storage, storage_from_url


@lru_cache(maxsize=4)
def _store(url: str, endpoint: str | None) -> Storage:
    return storage_from_url(url, s3_endpoint_url=endpoint)


def get_storage() -> Storage:
    s = get_settings()
    return _store(s.storage_url, s.s3_endpoint_url)
