"""python -m tests.simulator --host 0.0.0.0 --port 9000 [--config '{"signin_required": false}']"""

from __future__ import annotations

import argparse
import json

import uvicorn

from .app import create_app


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the AI Studio simulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--config", type=json.loads, default={}, help="initial config, as JSON (see /_sim/config)")
    args = parser.parse_args()
    app = create_app()
    app.state.sim.update_config(args.config)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
