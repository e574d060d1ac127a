"""Logging set-up shared by the API and the workers; API keys never reach a log line."""

from __future__ import annotations

import logging
import re

_KEY = re.compile(r"bise_sk_[A-Za-z0-9_-]+")


class RedactKeys(logging.Filter):
    """Replace anything that looks like an API key, wherever it appears in a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "bise_sk_" in message:
            record.msg = _KEY.sub("bise_sk_[redacted]", message)
            record.args = ()
        return True


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactKeys())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
