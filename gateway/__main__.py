"""`python -m gateway` / `aistudio-fleet-gateway`: one process, two listeners, one Fleet."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from litestar import Litestar
from pydantic import ValidationError

from gateway.app import create_admin_app, create_api_app, open_fleet
from gateway.db.migrate import SchemaMismatch
from gateway.dispatcher.results import StoreUnusable
from gateway.db.sealing import SecretKeyProblem
from gateway.settings import Settings

log = logging.getLogger("gateway")

# Query parameters that are credentials: a signed image URL's `signature` (gateway/api/image_urls.py), and the
# API key in Google's REST form (`?key=`, gateway/api/keys.py).
_SECRET_QUERY = re.compile(r"([?&](?:signature|key)=)[^&#\s]*", re.IGNORECASE)
_ACCESS_PATH_ARG = 2  # uvicorn.access's arguments: client, method, path with query, HTTP version, status


def redact_query(path: str) -> str:
    """The path with every credential in its query replaced by `REDACTED` (the path itself kept)."""
    return _SECRET_QUERY.sub(r"\1REDACTED", path)


class _RedactedAccessLog(logging.Filter):
    """Keeps signed image URLs' signatures and `?key=` API keys out of the access log: whoever reads the log could
    fetch the image, or generate with the key."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) > _ACCESS_PATH_ARG and isinstance(args[_ACCESS_PATH_ARG], str):
            record.args = (*args[:_ACCESS_PATH_ARG], redact_query(args[_ACCESS_PATH_ARG]), *args[_ACCESS_PATH_ARG + 1:])
        return True


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to `serve` below, which stops both servers together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _server(app: Litestar, host: str, port: int, settings: Settings) -> _Server:
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, log_level=settings.log_level.lower(), lifespan="on"
    )
    return _Server(config)


async def serve(settings: Settings) -> None:
    async with open_fleet(settings) as fleet:
        servers = [
            _server(create_api_app(settings, fleet=fleet), settings.api_host, settings.api_port, settings),
            _server(create_admin_app(settings, fleet=fleet), settings.admin_host, settings.admin_port, settings),
        ]

        def stop_all() -> None:
            for server in servers:
                server.should_exit = True

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_all)

        async def run(server: _Server) -> None:
            try:
                await server.serve()
            finally:
                stop_all()  # one listener down (or failed to bind) takes the other with it

        log.info(
            "generation API on http://%s:%s, management on http://%s:%s, runtime %s",
            settings.api_host, settings.api_port, settings.admin_host, settings.admin_port, settings.runtime,
        )
        await asyncio.gather(*(run(server) for server in servers))


def restrict_data_dir(settings: Settings) -> None:
    """What an older gateway left readable to all (the data folder, the SQLite file) becomes the gateway's alone."""
    data_dir = Path(settings.data_dir)
    paths = [data_dir, *(data_dir.glob("gateway.db*")), data_dir / "results"]
    for path in paths:
        try:
            if path.stat().st_uid == os.getuid():
                path.chmod(0o700 if path.is_dir() else 0o600)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot restrict the permissions of %s: %s", path, exc)


def main() -> None:
    # Everything the gateway writes (database, results, keys) holds instance tokens or prompts: owner only.
    os.umask(0o077)
    try:
        settings = Settings()
    except ValidationError as exc:  # a setting that cannot work: its reason, without a traceback
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        reasons = "; ".join(
            "".join(f"GATEWAY_{str(part).upper()}: " for part in error["loc"][:1]) + str(error["msg"]).removeprefix("Value error, ")
            for error in exc.errors()
        )
        log.error("refusing to start: %s", reasons)
        sys.exit(2)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request at INFO: every probe of every instance would flood the gateway's log.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    logging.getLogger("uvicorn.access").addFilter(_RedactedAccessLog())
    if problem := settings.admin_exposure_problem() or settings.admin_token_problem():
        log.error("refusing to start: %s", problem)
        sys.exit(2)
    restrict_data_dir(settings)
    try:
        asyncio.run(serve(settings))
    except (SchemaMismatch, StoreUnusable, SecretKeyProblem) as exc:
        log.error("refusing to start: %s", exc)
        sys.exit(2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
