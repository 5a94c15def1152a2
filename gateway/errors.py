"""Domain errors raised by the gateway's services; `gateway.api.errors` maps them to HTTP in one place.

Each error carries a message key and its parameters, so the same error reads in Chinese or English.
"""

from __future__ import annotations

from typing import Any


class FleetError(Exception):
    """Base of every error a person may read; `key` names the message in `gateway/locales/*.json`."""

    status_code = 400
    key = "bad_request"

    def __init__(self, key: str | None = None, *, headers: dict[str, str] | None = None, **params: Any) -> None:
        self.key = key or type(self).key
        self.params = params
        self.headers = dict(headers or {})  # e.g. Retry-After, WWW-Authenticate
        super().__init__(f"{self.key} {params}" if params else self.key)


class Unauthorized(FleetError):
    """No valid admin credential (bearer token or panel session)."""

    status_code = 401
    key = "unauthorized"


class Forbidden(FleetError):
    status_code = 403
    key = "forbidden"


class NotFound(FleetError):
    status_code = 404
    key = "not_found"


class Conflict(FleetError):
    status_code = 409
    key = "conflict"


class Invalid(FleetError):
    status_code = 422
    key = "invalid"


class TooLarge(FleetError):
    status_code = 413
    key = "too_large"


class EngineDown(FleetError):
    """The runtime engine (Docker, the local supervisor, ...) cannot be reached."""

    status_code = 503
    key = "engine_down"

    def __init__(self, engine: str, reason: str) -> None:
        super().__init__(engine=engine, reason=reason)


class InstanceUnavailable(FleetError):
    """The instance's own HTTP server cannot be reached or answered with an error we cannot pass on."""

    status_code = 502
    key = "instance_unreachable"


class RuntimeFailed(FleetError):
    """The engine answered but could not do what was asked for this one instance."""

    status_code = 502
    key = "runtime_failed"


class BadRequest(FleetError):
    """A body that cannot be read at all (not JSON, not an object), as opposed to one with invalid values."""

    status_code = 400
    key = "bad_request"


class Gone(FleetError):
    """It existed but is no longer kept (a task's images after their time)."""

    status_code = 410
    key = "gone"


class QueueFull(FleetError):
    """Every instance is busy and the wait queue is full; `Retry-After` says when to come back."""

    status_code = 429
    key = "queue_full"


class Exhausted(FleetError):
    """No account may be asked for the model before its allowance resets (or its rate-limit pause ends):
    `Retry-After` points at that moment. A 429, as Google answers a spent quota."""

    status_code = 429
    key = "model_exhausted"


class Unavailable(FleetError):
    """No instance can take the task: none runs, none is signed in, all rest, or the wait was too long."""

    status_code = 503
    key = "unavailable"


class HostNotAllowed(FleetError):
    """A Host header the gateway does not answer to (DNS rebinding, or a name missing from GATEWAY_ALLOWED_HOSTS)."""

    status_code = 400
    key = "host_not_allowed"
