"""The migration's target inside the gateway (the panel): the instance service, as the management API uses it."""

from __future__ import annotations

from gateway.errors import Conflict, FleetError
from gateway.i18n import translate
from gateway.legacy.plan import Existing, TargetConflict, TargetFailed
from gateway.services.instances import InstanceService


class ServiceTarget:
    def __init__(self, instances: InstanceService, language: str) -> None:
        self._instances = instances
        self._language = language

    async def existing(self) -> list[Existing]:
        return [
            Existing(v.instance_id, v.name, v.legacy_id, v.status, v.started_at)
            for v in await self._instances.list()
        ]

    async def create(self, name: str, legacy_id: str, session: bytes | None) -> tuple[str, str]:
        try:
            view = await self._instances.create(name, legacy_id=legacy_id, session=session)
        except Conflict as exc:
            if exc.key in ("instance_name_taken", "instance_legacy_taken"):
                raise TargetConflict("name" if exc.key == "instance_name_taken" else "legacy", self._said(exc)) from exc
            raise TargetFailed(self._said(exc)) from exc
        except FleetError as exc:
            raise TargetFailed(self._said(exc)) from exc
        return view.instance_id, view.name

    async def start(self, instance_id: str) -> None:
        try:
            await self._instances.start(instance_id)
        except FleetError as exc:
            raise TargetFailed(self._said(exc)) from exc

    def _said(self, exc: FleetError) -> str:
        return translate(exc.key, self._language, **exc.params)
