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
