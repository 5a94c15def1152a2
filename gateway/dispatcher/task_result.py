"""A task as the API reports it (`TaskResult`), and what its webhook carries."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.db.models import TaskStatus


@dataclass
class TaskResult:
    """A task as the API reports it; images only when it succeeded and they are at hand."""

    task_id: uuid.UUID
    status: str
    mode: str
    images_b64: list[str] = field(default_factory=list)
    text: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    instance_id: uuid.UUID | None = None
    instance_name: str | None = None
    attempts: int = 0
    timings: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    finished_at: datetime | None = None
    model: str | None = None
    image_size: str | None = None
    output_format: str | None = None
    image_hashes: list[str] = field(default_factory=list)  # sha256 of each image, as the client receives it
    retry_at: datetime | None = None  # it failed for a spent model: when an account may be asked for it again

    @property
    def succeeded(self) -> bool:
        return self.status == TaskStatus.SUCCEEDED


def webhook_payload(result: TaskResult) -> dict[str, Any]:
    """What a task's webhook carries: its end, and its images while they are at hand."""
    return {
        "task_id": str(result.task_id),
        "status": result.status,
        "success": result.succeeded,
        "generated_images": result.images_b64,
        "image_hashes": result.image_hashes,
        "output_format": result.output_format,
        "ai_text_response": result.text,
        "error_code": result.error_code,
        "error_message": result.error_message,
        "model": result.model,
        "image_size": result.image_size,
        "instance": result.instance_name,
        "attempts": result.attempts,
        "finished_at": result.finished_at.isoformat() if result.finished_at else None,
    }


@dataclass(frozen=True)
class Delivery:
    """A task's webhook, written to the outbox in the same transaction as the task's end: a gateway that dies
    between the two can leave neither a finished task without its webhook nor a webhook for a task still open."""

    task_id: uuid.UUID
    url: str
    payload: dict[str, Any]

    def row(self, owner: str, now: datetime) -> dict[str, Any]:
        """A `webhook_outbox` row, due now, owned by the gateway that writes it."""
        return {"id": uuid.uuid4(), "task_id": self.task_id, "url": self.url, "payload": self.payload, "attempts": [],
                "next_at": now, "owner": owner, "created_at": now}


def ended_unattended(task: Any, values: dict[str, Any]) -> Delivery | None:
    """The webhook of a task row that another gateway ended (`values`: its end columns), e.g. as abandoned."""
    if not task.callback_url:
        return None
    result = TaskResult(
        task.id, values["status"], task.mode, error_code=values.get("error_code"),
        error_message=values.get("error_message"), attempts=task.attempts or 0, created_at=task.created_at,
        finished_at=values.get("finished_at"), model=task.model, image_size=task.image_size,
        output_format=task.output_format,
    )
    return Delivery(task.id, task.callback_url, webhook_payload(result))
