"""``python -m api``: serve the API with uvicorn on BISE_HOST:BISE_PORT."""

from __future__ import annotations

import uvicorn

from service.logs import configure_logging
from service.settings import get_settings


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    uvicorn.run("api.main:create_app", factory=True, host=settings.host, port=settings.port,
                workers=settings.api_workers, log_level=settings.log_level, proxy_headers=True,
                access_log=False, timeout_graceful_shutdown=10)


if __name__ == "__main__":
    main()
