"""The fixed set of failure codes an instance reports, and the exception that carries one."""

from __future__ import annotations

from fleet_contract.codes import ErrorCode
from fleet_contract.messages import TaskError

__all__ = ["BadInput", "ErrorCode", "GenerationError", "UIChanged"]


class GenerationError(Exception):
    """One generation failed; `retry_safe` says whether another instance may run the same prompt."""

    def __init__(
        self, code: ErrorCode, message: str, *, retry_safe: bool, role: str | None = None, text: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_safe = retry_safe
        self.role = role
        self.text = text  # what the model said, when it said something (blocked prompts)

    def to_message(self) -> TaskError:
        return TaskError(code=self.code, message=self.message, retry_safe=self.retry_safe, role=self.role)


class UIChanged(GenerationError):
    """Every selector candidate of a role missed: the page no longer looks like we expect."""

    def __init__(self, role: str, *, retry_safe: bool = True) -> None:
        super().__init__(
            ErrorCode.UI_CHANGED,
            f"no selector for role '{role}' matched the page",
            retry_safe=retry_safe,
            role=role,
        )


class BadInput(Exception):
    """The request itself is wrong; nothing was sent to the browser."""

    def __init__(self, message: str, status_code: int = 422) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
