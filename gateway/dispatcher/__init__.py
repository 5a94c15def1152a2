"""The dispatcher: leases, the wait queue, retries and the results store behind the generation API."""

from gateway.dispatcher.dispatcher import Dispatcher, TaskResult
from gateway.dispatcher.inputs import ASPECT_RATIOS, GenerationRequest, InputLimits, form_request, parse_json_request

__all__ = [
    "ASPECT_RATIOS",
    "Dispatcher",
    "GenerationRequest",
    "InputLimits",
    "TaskResult",
    "form_request",
    "parse_json_request",
]
