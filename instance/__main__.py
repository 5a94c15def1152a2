"""`python -m instance`: serve one instance on INSTANCE_HOST:INSTANCE_PORT."""

from __future__ import annotations

import logging
import sys

import uvicorn

from instance.app import create_app
from instance.settings import InstanceSettings


def main() -> None:
    settings = InstanceSettings()
    if problem := settings.exposure_problem():
        sys.exit(f"instance: {problem}")
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
