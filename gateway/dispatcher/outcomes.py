"""What one attempt on one instance came to, and what the dispatcher does about it: a pure classification.

The instance answers 200 whether its generation worked or not (fleet_contract.messages.GenerateAnswer); the
gateway's own failures to reach it are exceptions of the instance client. Both become an `Attempt`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from fleet_contract.codes import ErrorCode
from fleet_contract.messages import GenerateAnswer
from gateway.accounts.policy import BlockKind
from gateway.instance_client import (
    InstanceBadAnswer,
    InstanceCallError,
    InstanceNoAnswer,
    InstanceRejected,
)

# Error codes the gateway itself gives a task (the instance's own: fleet_contract.codes.ErrorCode).
UNREACHABLE = "instance_unreachable"  # the gateway could not reach the task's instance: refused, reset, gone, 5xx
BUSY = "instance_busy"  # the instance was running something else (409)
TIMEOUT = "timeout"  # no answer within generation_timeout
BAD_ANSWER = "instance_bad_answer"  # an answer that does not follow the contract
BAD_INPUT = "bad_input"
QUEUE_TIMEOUT = "queue_timeout"  # waited for an instance longer than allowed
NO_INSTANCE = "no_instance"  # nothing could run it
CLIENT_GONE = "client_disconnected"  # the client left while the task waited
SHUTDOWN = "gateway_shutdown"
ABANDONED = "abandoned"  # left queued/running by a gateway that died
EXHAUSTED = "model_exhausted"  # no account may be asked for the model before its reset or pause ends

QUOTA = ErrorCode.QUOTA_EXHAUSTED
RATE_LIMITED = ErrorCode.RATE_LIMITED
NEEDS_LOGIN = ErrorCode.NEEDS_LOGIN
MODEL_UNAVAILABLE = ErrorCode.MODEL_UNAVAILABLE  # the instance's account cannot use the requested model


@dataclass
class Attempt:
    """One attempt's outcome; the flags say what the dispatcher must do next."""

    success: bool
    images_b64: list[str] = field(default_factory=list)
    text: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    retry: bool = False  # another instance may run the same prompt
    suspect: bool = False  # the reconciler should probe this instance now
    bounced: bool = False  # the instance was busy: nothing ran, so it does not count as an attempt
    # The account may not be asked for this model for a while (refused, allowance spent, rate-limited): nothing
    # was generated, so another instance may run it and the retry is not spent.
    block: BlockKind | None = None
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def model_unavailable(self) -> bool:
        return self.block == BlockKind.UNAVAILABLE

    @property
    def spends_retry(self) -> bool:
        return not self.bounced and self.block is None


_BLOCKS = {QUOTA: BlockKind.QUOTA, RATE_LIMITED: BlockKind.RATE_LIMIT, MODEL_UNAVAILABLE: BlockKind.UNAVAILABLE}


def from_answer(answer: GenerateAnswer) -> Attempt:
    """The instance's 200 answer, decoded by the instance client (so its types are the contract's)."""
    if answer.success:
        if not answer.images_b64:
            return Attempt(False, error_code=BAD_ANSWER, error_message="the instance answered success without images")
        return Attempt(True, images_b64=answer.images_b64, text=answer.text, timings=answer.timings)
    code = str(answer.error.code) if answer.error and answer.error.code else ErrorCode.INTERNAL_ERROR
    attempt = Attempt(
        False,
        text=answer.text,
        error_code=code,
        error_message=(answer.error.message if answer.error else None) or code,
        retry=bool(answer.error and answer.error.retry_safe),
        timings=answer.timings,
    )
    if code in _BLOCKS:
        attempt.block, attempt.retry = _BLOCKS[code], True
    elif code in (NEEDS_LOGIN, ErrorCode.REGION_BLOCKED):
        attempt.suspect = True  # the probe records the login state or the region block the instance reports
    return attempt


def from_error(exc: InstanceCallError) -> Attempt:
    """The instance could not be reached, or refused the call."""
    if isinstance(exc, InstanceRejected):
        return _rejected(exc)
    if isinstance(exc, InstanceBadAnswer):
        return Attempt(False, error_code=BAD_ANSWER, error_message=str(exc))
    if isinstance(exc, InstanceNoAnswer) and _timed_out(exc):
        # It took the prompt and never answered: hung, or AI Studio is slow. Running it again could spend twice.
        return Attempt(False, error_code=TIMEOUT, error_message=str(exc), suspect=True)
    return Attempt(False, error_code=UNREACHABLE, error_message=str(exc), retry=True, suspect=True)


def _rejected(exc: InstanceRejected) -> Attempt:
    if exc.status_code == 409:
        return Attempt(False, error_code=BUSY, error_message=exc.detail, retry=True, bounced=True)
    if exc.status_code in (400, 413, 422):
        return Attempt(False, error_code=BAD_INPUT, error_message=exc.detail)
    # 5xx (browser down, crashed handler), 401 (a token from another start), 404: the instance is not well.
    return Attempt(False, error_code=UNREACHABLE, error_message=str(exc), retry=True, suspect=True)


def _timed_out(exc: InstanceNoAnswer) -> bool:
    cause = exc.__cause__
    if isinstance(cause, httpx.ConnectTimeout):
        return False  # never got to send anything
    return isinstance(cause, TimeoutError | httpx.TimeoutException)
