"""The instance's browser through the management API: screenshot, navigation, session copy and the live view.

The live view is a WebSocket proxy: the browser talks to the gateway, the gateway to the instance with the
instance's token, which therefore never reaches the browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import msgspec
from litestar import Controller, Response, WebSocket, get, post, websocket
from litestar.di import NamedDependency
from litestar.exceptions import WebSocketDisconnect
from litestar.params import FromPath, JSONBody
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from gateway.api.errors import request_language
from gateway.api.management import DEPENDENCIES
from gateway.errors import FleetError
from gateway.i18n import translate
from gateway.services.instances import InstanceService

log = logging.getLogger(__name__)

# What a viewer may send: pointer, keys, text; anything else is dropped before it reaches the instance.
INPUT_TYPES = frozenset({"mouse", "key", "text"})
MAX_INPUT_CHARS = 20_000


class NavigateIn(msgspec.Struct, forbid_unknown_fields=True):
    target: str | None = None  # "signin" or "home"
    url: str | None = None


class CopySessionIn(msgspec.Struct, forbid_unknown_fields=True):
    source_instance_id: str


class ActionOut(msgspec.Struct, kw_only=True):
    success: bool = True
    message: str


class ConsoleController(Controller):
    path = "/api/instances/{instance_id:str}"
    tags = ["instances"]
    dependencies = DEPENDENCIES

    @get("/screenshot", operation_id="getInstanceScreenshot", summary="PNG of the instance's page now")
    async def screenshot(self, instance_id: FromPath[str], instances: NamedDependency[InstanceService]) -> Response[bytes]:
        image, media_type = await instances.screenshot(instance_id)
        return Response(image, media_type=media_type, headers={"Cache-Control": "no-store"})

    @post("/navigate", operation_id="navigateInstance", status_code=200, summary="Open its sign-in page or home")
    async def navigate(self, instance_id: FromPath[str], data: JSONBody[NavigateIn], instances: NamedDependency[InstanceService], language: NamedDependency[str]) -> ActionOut:
        await instances.navigate(instance_id, target=data.target, url=data.url)
        view = await instances.get(instance_id)
        return ActionOut(message=translate("instance_navigated", language, name=view.name))

    @post(
        "/session/copy", operation_id="copyInstanceSession", status_code=200,
        summary="Sign this instance in with another instance's session",
    )
    async def copy_session(
        self, instance_id: FromPath[str], data: JSONBody[CopySessionIn], instances: NamedDependency[InstanceService], language: NamedDependency[str]
    ) -> ActionOut:
        result = await instances.copy_session(data.source_instance_id, instance_id)
        source, target = await instances.get(data.source_instance_id), await instances.get(instance_id)
        return ActionOut(message=session_copied_message(language, source.name, target.name, result))

    @post(
        "/session/restore", operation_id="restoreInstanceSession", status_code=200,
        summary="Back to the login the last import replaced (kept on the instance's volume)",
    )
    async def restore_session(
        self, instance_id: FromPath[str], instances: NamedDependency[InstanceService], language: NamedDependency[str]
    ) -> ActionOut:
        result = await instances.restore_session(instance_id)
        view = await instances.get(instance_id)
        return ActionOut(message=translate("session_restored", language, name=view.name, login_state=result["login_state"]))

    @websocket("/liveview", operation_id="instanceLiveView")
    async def liveview(self, socket: WebSocket[Any, Any, Any], instance_id: FromPath[str], instances: NamedDependency[InstanceService]) -> None:
        await socket.accept()
        try:
            async with instances.liveview(instance_id) as upstream:
                await relay(socket, upstream)
        except FleetError as exc:
            message = translate(exc.key, request_language(socket), **exc.params)
            with contextlib.suppress(Exception):
                await socket.send_json({"type": "error", "message": message})
        finally:
            with contextlib.suppress(Exception):
                await socket.close()


def session_copied_message(language: str, source: str, target: str, result: dict[str, Any]) -> str:
    return translate(
        "session_copied", language, source=source, name=target,
        cookies=result.get("cookies", "?"), login_state=result.get("login_state", "unknown"),
    )


async def relay(socket: WebSocket[Any, Any, Any], upstream: ClientConnection) -> None:
    """Frames down, input up, until either side goes; then the other is closed by the callers."""
    tasks = [asyncio.create_task(_frames_down(socket, upstream)), asyncio.create_task(_input_up(socket, upstream))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _frames_down(socket: WebSocket[Any, Any, Any], upstream: ClientConnection) -> None:
    # Passed through undecoded; the instance already drops frames a slow viewer cannot take.
    with contextlib.suppress(ConnectionClosed, WebSocketDisconnect):
        async for message in upstream:
            await socket.send_text(message if isinstance(message, str) else message.decode())


async def _input_up(socket: WebSocket[Any, Any, Any], upstream: ClientConnection) -> None:
    with contextlib.suppress(ConnectionClosed, WebSocketDisconnect):
        while True:
            text = await socket.receive_text()
            if (event := viewer_input(text)) is not None:
                await upstream.send(event)


def viewer_input(text: str) -> str | None:
    """The viewer's message as the instance should get it, or None when it is not pointer, key or text input."""
    if len(text) > MAX_INPUT_CHARS:
        return None
    try:
        message = json.loads(text)
    except ValueError:
        return None
    if not isinstance(message, dict) or message.get("type") not in INPUT_TYPES:
        return None
    return text


CONSOLE_CONTROLLERS = [ConsoleController]
