"""The aiohttp application: `/api/chat` (one conversation at a time) and the web page.

The model is shared by every connection but holds one conversation: a new connection waits up to
`ServerSettings.busy_wait_s` seconds for the current one to end, then either gets the handshake (0x00) on a fresh
streaming state or an error message (0x05) and the close code 1013 (try again later). Every model call runs on one
dedicated thread, in order, so that a conversation's last frame finishes before the next conversation's reset.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from .conversation import Conversation
from .protocol import CloseCode, close_reason, error_message, handshake_message
from .served_model import ServedModel

logger = logging.getLogger("moshi.server")

CHAT_ROUTE = "/api/chat"
MAX_MESSAGE_BYTES = 1 << 20
"""Largest client message accepted (an Ogg page is at most 65,307 bytes); aiohttp closes larger ones with 1009."""
FINISHED_KEPT = 32
"""How many finished conversations' stats the application keeps (for benchmarks and tests)."""

FINISHED_CONVERSATIONS = web.AppKey("finished_conversations", collections.deque)


def bundled_page_dir() -> Path:
    """The folder of this package's web page (shipped as package data)."""
    return Path(str(resources.files(__package__) / "static"))


@dataclasses.dataclass
class ServerSettings:
    """`static_dir`: folder served at `/` (its index.html) and below, None for no page.
    `busy_wait_s`: how long a new connection waits for the model before being told it is busy.
    `inbox_frames`, `outbox_frames`: the most 80 ms frames waiting for the model / for the client before the oldest
    are dropped (about one second each by default)."""

    static_dir: Path | None = dataclasses.field(default_factory=bundled_page_dir)
    busy_wait_s: float = 10.0
    inbox_frames: int = 12
    outbox_frames: int = 12


class ChatEndpoint:
    """The `/api/chat` websocket handler around one `ServedModel`."""

    def __init__(self, model: ServedModel, settings: ServerSettings, finished: collections.deque) -> None:
        self.model, self.settings, self.finished = model, settings, finished
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moshi-model")
        self.model_lock = asyncio.Lock()

    async def run_on_model(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.model_thread, functools.partial(function, *args))

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES)
        await ws.prepare(request)
        peer = describe_peer(request)
        logger.info("%s connected", peer)
        if not await self._wait_for_model(peer):
            await self._send_busy(ws, peer)
            return ws
        conversation = Conversation(ws, self.model, self.run_on_model, peer, self.settings.inbox_frames,
                                    self.settings.outbox_frames)
        try:
            await self.run_on_model(self.model.start_conversation)
            await ws.send_bytes(handshake_message())
            await conversation.run()
        except ConnectionError as error:
            logger.info("%s left before the conversation started (%s)", peer, error)
        finally:
            self.finished.append(conversation.stats)
            self.model_lock.release()
        return ws

    async def _wait_for_model(self, peer: str) -> bool:
        if self.model_lock.locked():
            logger.info("%s waits for the model (busy with another conversation)", peer)
        try:
            await asyncio.wait_for(self.model_lock.acquire(), self.settings.busy_wait_s)
        except asyncio.TimeoutError:
            return False
        return True

    async def _send_busy(self, ws: web.WebSocketResponse, peer: str) -> None:
        reason = f"the model is busy with another conversation (waited {self.settings.busy_wait_s:g} s); try again"
        logger.warning("turning %s away: %s", peer, reason)
        with contextlib.suppress(ConnectionError):  # the client may be gone already
            await ws.send_bytes(error_message(reason))
            await ws.close(code=CloseCode.TRY_AGAIN_LATER, message=close_reason(reason))

    def shutdown(self) -> None:
        self.model_thread.shutdown(wait=True)


def describe_peer(request: web.Request) -> str:
    """`host:port` of the client, for the log."""
    address = request.transport.get_extra_info("peername") if request.transport is not None else None
    if not address:
        return request.remote or "unknown client"
    return f"{address[0]}:{address[1]}"


def build_app(model: ServedModel, settings: ServerSettings | None = None) -> web.Application:
    """The application serving `model` on `/api/chat` and the page of `settings.static_dir` at `/`."""
    settings = settings or ServerSettings()
    app = web.Application()
    app[FINISHED_CONVERSATIONS] = collections.deque(maxlen=FINISHED_KEPT)
    endpoint = ChatEndpoint(model, settings, app[FINISHED_CONVERSATIONS])
    app.router.add_get(CHAT_ROUTE, endpoint.handle)

    async def stop_model_thread(_: web.Application) -> None:
        await asyncio.get_running_loop().run_in_executor(None, endpoint.shutdown)

    app.on_cleanup.append(stop_model_thread)
    if settings.static_dir is not None:
        add_page_routes(app, settings.static_dir)
    return app


def add_page_routes(app: web.Application, folder: Path) -> None:
    index = folder / "index.html"

    async def page(_: web.Request) -> web.FileResponse:
        return web.FileResponse(index)

    app.router.add_get("/", page)
    app.router.add_static("/", folder, follow_symlinks=False)
