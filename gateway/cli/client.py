"""The management API (:8813) as the CLI speaks it: bearer token, the gateway's messages, names or ids."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8813"
SHORT_ID = 8  # what the table shows of an id; any unique prefix at least this long names an instance

# Exit codes: what failed (README, "Command line").
EXIT_OK = 0
EXIT_REFUSED = 1  # the gateway answered with an error (4xx/5xx), or an instance name matched nothing
EXIT_USAGE = 2  # bad arguments or an input file that cannot be used (click's own usage errors are 2 as well)
EXIT_UNREACHABLE = 3  # no answer from the gateway (or, for `db upgrade`, from the database)
EXIT_PARTIAL = 4  # a migration that left something behind (see its report)


class CliError(Exception):
    exit_code = EXIT_REFUSED

    def __init__(self, message: str, *, code: str | None = None) -> None:
        self.code = code
        super().__init__(message)


class ApiRefused(CliError):
    """The gateway answered with an error; `status` and `code` are its HTTP status and message key."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        self.status = status
        super().__init__(message, code=code)


class Unreachable(CliError):
    exit_code = EXIT_UNREACHABLE


class UsageProblem(CliError):
    exit_code = EXIT_USAGE


def resolve_token(token_file: Path | None) -> str | None:
    """--token-file, else AISTUDIO_FLEET_TOKEN, else GATEWAY_ADMIN_TOKEN (set inside the gateway's container)."""
    if token_file is not None:
        try:
            return token_file.read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise UsageProblem(f"cannot read the token file {token_file}: {exc.strerror or exc}") from None
    return os.environ.get("AISTUDIO_FLEET_TOKEN") or os.environ.get("GATEWAY_ADMIN_TOKEN") or None


def language() -> str:
    """zh when the terminal's locale is Chinese, else en (the gateway answers in the same language)."""
    for variable in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = os.environ.get(variable)
        if value:
            return "zh" if value.lower().startswith("zh") else "en"
    return "en"


class FleetClient:
    def __init__(self, url: str, token: str | None, *, timeout: float = 30.0, lang: str = "en") -> None:
        headers = {"Accept-Language": lang, "User-Agent": "aistudio-fleet-cli"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.url = url.rstrip("/")
        # No environment proxies: the admin port is private (loopback, a tunnel, the compose network).
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, trust_env=False)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # Plain calls --------------------------------------------------------------------------------

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            return response.content

    def raw(self, method: str, path: str, **kwargs: Any) -> bytes:
        return self._send(method, path, **kwargs).content

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach the gateway at {self.url}: {exc or type(exc).__name__}") from None
        _raise_for(response)
        return response

    # Instances ----------------------------------------------------------------------------------

    def instances(self) -> list[dict[str, Any]]:
        return self.call("GET", "/api/instances")["instances"]

    def resolve(self, name_or_id: str) -> dict[str, Any]:
        """An instance by its exact name, its id, or a unique prefix of its id."""
        views = self.instances()
        for view in views:
            if name_or_id in (view["name"], view["instance_id"]):
                return view
        if len(name_or_id) >= 4:
            found = [v for v in views if v["instance_id"].startswith(name_or_id.lower())]
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise CliError(f"{name_or_id!r} is the start of {len(found)} instance ids; give more of it or the name")
        raise CliError(f"no instance named {name_or_id!r} (nor with that id)", code="instance_not_found")

    def follow_logs(self, instance_id: str, *, tail: int) -> Iterator[tuple[str, str]]:
        """(event, data) pairs of the log stream until it ends."""
        params = {"follow": "true", "tail": str(tail)}
        try:
            with self._http.stream("GET", f"/api/instances/{instance_id}/logs", params=params, timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_for(response)
                yield from _server_sent_events(response.iter_lines())
        except httpx.TransportError as exc:
            raise Unreachable(f"the log stream from {self.url} broke off: {exc or type(exc).__name__}") from None


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        raise ApiRefused(response.status_code, body["message"], body.get("error"))
    text = response.text.strip()[:300] or response.reason_phrase
    raise ApiRefused(response.status_code, f"HTTP {response.status_code}: {text}")


def _server_sent_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    event, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith(":"):
            continue  # a keep-alive comment
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        yield event, "\n".join(data)


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2)
