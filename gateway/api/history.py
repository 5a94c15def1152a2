"""`GET /api/tasks`: recent tasks with their outcome, instance and timings."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, get
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromQuery, Parameter

from gateway.services.history import TaskHistoryService, TaskView


def provide_history(state: State) -> TaskHistoryService:
    return state.fleet.history


class TaskListOut(msgspec.Struct, kw_only=True):
    success: bool = True
    tasks: list[TaskView]


class TaskHistoryController(Controller):
    path = "/api/tasks"
    tags = ["tasks"]
    dependencies = {"history": Provide(provide_history, sync_to_thread=False)}

    @get("/", operation_id="listTasks", summary="Recent tasks, newest first; filter by outcome and instance")
    async def list_tasks(
        self,
        history: NamedDependency[TaskHistoryService],
        outcome: FromQuery[str | None] = None,
        instance_id: FromQuery[str | None] = None,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
    ) -> TaskListOut:
        return TaskListOut(tasks=await history.recent(limit=limit, outcome=outcome, instance_id=instance_id))


HISTORY_CONTROLLERS = [TaskHistoryController]
