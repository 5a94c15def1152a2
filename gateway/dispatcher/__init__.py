"""The dispatcher: leases, the wait queue, retries and the results store behind the generation API."""

from gateway.dispatcher.dispatcher import Dispatcher, TaskResult
from gateway.dispatcher.inputs import (
    GenerationOptions,
    GenerationRequest,
    InputLimits,
    form_request,
    generation_options,
    parse_json_request,
)

__all__ = [
    "Dispatcher",
    "GenerationOptions",
    "GenerationRequest",
    "InputLimits",
    "TaskResult",
    "form_request",
    "generation_options",
    "parse_json_request",
]
