"""`python -m tests.botcheck [--host 127.0.0.1] [--port 8765]`: serve the bot-check page, print each report."""

from __future__ import annotations

import argparse
import sys

from tests.botcheck.server import BotcheckServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    server = BotcheckServer((args.host, args.port))
    print(f"botcheck listening on http://{args.host}:{server.server_port}/", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
