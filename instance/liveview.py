"""Live view for manual sign-in: screencast frames out, mouse, keyboard and text in (CDP)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from litestar import WebSocket
from litestar.exceptions import WebSocketDisconnect
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page

from instance.browser import BrowserHost

log = logging.getLogger(__name__)

SCREENCAST = {"format": "jpeg", "quality": 60, "everyNthFrame": 1}
_MOUSE_BUTTONS = {"left", "middle", "right"}


async def serve_liveview(socket: WebSocket, host: BrowserHost) -> None:
    await socket.accept()
    frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=2)
    tasks = [
        asyncio.create_task(_stream_frames(host, frames)),
        asyncio.create_task(_send_frames(socket, frames)),
        asyncio.create_task(_receive_input(socket, host)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await socket.close()


async def _stream_frames(host: BrowserHost, frames: asyncio.Queue) -> None:
    """Screencast the current page; when the page object is replaced (crash, new session), follow it."""
    while True:
        changed = host.page_changed
        try:
            page = host.page
            session = await page.context.new_cdp_session(page)
        except PlaywrightError:
            await asyncio.sleep(0.5)  # browser restarting
            continue
        session.on("Page.screencastFrame", lambda params, s=session: _on_frame(params, s, frames))
        await session.send("Page.startScreencast", {**SCREENCAST, **_max_size(page)})
        try:
            await changed.wait()
        finally:
            with contextlib.suppress(PlaywrightError):
                await session.detach()


def _max_size(page: Page) -> dict[str, int]:
    size = page.viewport_size or {"width": 1440, "height": 900}
    return {"maxWidth": size["width"], "maxHeight": size["height"]}


def _on_frame(params: dict[str, Any], session, frames: asyncio.Queue) -> None:
    meta = params.get("metadata", {})
    frame = {
        "type": "frame",
        "data": params["data"],
        "width": meta.get("deviceWidth"),
        "height": meta.get("deviceHeight"),
    }
    if frames.full():  # a slow viewer gets the newest frame, not a backlog
        with contextlib.suppress(asyncio.QueueEmpty):
            frames.get_nowait()
    frames.put_nowait(frame)
    asyncio.get_running_loop().create_task(_ack(session, params["sessionId"]))


async def _ack(session, session_id: int) -> None:
    with contextlib.suppress(PlaywrightError):
        await session.send("Page.screencastFrameAck", {"sessionId": session_id})


async def _send_frames(socket: WebSocket, frames: asyncio.Queue) -> None:
    while True:
        await socket.send_json(await frames.get())


async def _receive_input(socket: WebSocket, host: BrowserHost) -> None:
    while True:
        try:
            message = await socket.receive_json()
        except WebSocketDisconnect:
            return
        try:
            await apply_input(host.page, message)
        except (PlaywrightError, KeyError, TypeError, ValueError) as exc:
            log.debug("live view input ignored: %s", exc)


async def apply_input(page: Page, message: dict[str, Any]) -> None:
    kind = message.get("type")
    if kind == "mouse":
        await _mouse(page, message)
    elif kind == "key":
        key = str(message["key"])
        event = message.get("event", "press")
        if event == "down":
            await page.keyboard.down(key)
        elif event == "up":
            await page.keyboard.up(key)
        else:
            await page.keyboard.press(key)
    elif kind == "text":
        await page.keyboard.insert_text(str(message["text"]))  # paste, IME text, CJK


async def _mouse(page: Page, message: dict[str, Any]) -> None:
    x, y = float(message["x"]), float(message["y"])
    button = message.get("button", "left")
    button = button if button in _MOUSE_BUTTONS else "left"
    event = message.get("event", "click")
    if event == "click":
        await page.mouse.click(x, y, button=button)
    elif event == "move":
        await page.mouse.move(x, y)
    elif event == "down":
        await page.mouse.move(x, y)
        await page.mouse.down(button=button)
    elif event == "up":
        await page.mouse.move(x, y)
        await page.mouse.up(button=button)
    elif event == "wheel":
        await page.mouse.move(x, y)
        await page.mouse.wheel(float(message.get("delta_x", 0)), float(message.get("delta_y", 0)))
