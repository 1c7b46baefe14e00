"""The aiohttp application: `/api/chat` (one conversation at a time) and the web page.

The model is shared by every connection but holds one conversation: a new connection waits up to
`ServerSettings.busy_wait_s` seconds for the current one to end, then either gets the handshake (0x00) on a fresh
streaming state or an error message (0x05) and the close code 1013 (try again later). A conversation that sends no
audio for `idle_timeout_s`, or whose client stops answering pings, is closed and frees the model for the next. Every
model call runs on one dedicated thread, in order, so that a conversation's last frame finishes before the next
conversation's reset. When the server stops, every open connection is closed with 1001 and the reason.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from .conversation import Conversation, ConversationLimits
from .protocol import CloseCode, handshake_message
from .served_model import ServedModel
from .websocket import SEND_BUFFER_BYTES, ChatSocket

logger = logging.getLogger("moshi.server")

CHAT_ROUTE = "/api/chat"
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
    `heartbeat_s`: a client that sends nothing for this long is pinged and dropped if it does not answer within half
    of it (None: no pings). `send_buffer_bytes`: unsent bytes the kernel, then the transport, may hold per client.
    `conversation`: the idle timeout, the oldest reply frame sent and the queues of each conversation."""

    static_dir: Path | None = dataclasses.field(default_factory=bundled_page_dir)
    busy_wait_s: float = 10.0
    heartbeat_s: float | None = 10.0
    send_buffer_bytes: int = SEND_BUFFER_BYTES
    conversation: ConversationLimits = dataclasses.field(default_factory=ConversationLimits)


class ChatEndpoint:
    """The `/api/chat` websocket handler around one `ServedModel`."""

    def __init__(self, model: ServedModel, settings: ServerSettings, finished: collections.deque) -> None:
        self.model, self.settings, self.finished = model, settings, finished
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moshi-model")
        self.model_lock = asyncio.Lock()
        self.open_sockets: set[ChatSocket] = set()

    async def run_on_model(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.model_thread, functools.partial(function, *args))

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = ChatSocket(describe_peer(request), self.settings.heartbeat_s, self.settings.send_buffer_bytes)
        await ws.prepare(request)
        logger.info("%s connected", ws.peer)
        self.open_sockets.add(ws)
        try:
            if await self._wait_for_model(ws):
                await self._converse(ws)
        finally:
            self.open_sockets.discard(ws)
        return ws

    async def _wait_for_model(self, ws: ChatSocket) -> bool:
        """Take the model, or refuse `ws` when it stays busy for `busy_wait_s` (False)."""
        if not self.model_lock.locked():
            return await self.model_lock.acquire()  # at once: nothing else runs between the test and the taking
        logger.info("%s waits for the model (busy with another conversation)", ws.peer)
        try:
            await asyncio.wait_for(self.model_lock.acquire(), self.settings.busy_wait_s)
        except asyncio.TimeoutError:
            if ws.closed:  # aiohttp's heartbeat found it gone meanwhile
                await ws.refuse_silent_peer()
            else:
                await ws.refuse(f"the model is busy with another conversation (waited {self.settings.busy_wait_s:g} "
                                f"s); try again", CloseCode.TRY_AGAIN_LATER)
            return False
        return True

    async def _converse(self, ws: ChatSocket) -> None:
        """One conversation on `ws`, which holds the model lock (released here)."""
        conversation = Conversation(ws, self.model, self.run_on_model, self.settings.conversation)
        try:
            if ws.closed:  # while it waited: aiohttp's heartbeat had no answer to its ping, or the server refused it
                await ws.refuse_silent_peer()
                conversation.stats.end_reason = f"closed by the server before the conversation: {ws.refusal}"
                return
            await self.run_on_model(self.model.start_conversation)
            await ws.send_bytes(handshake_message())
            await conversation.run()
        except ConnectionError as error:
            logger.info("%s left before the conversation started (%s)", ws.peer, error)
        finally:
            self.finished.append(conversation.stats)
            self.model_lock.release()

    async def close_all(self, reason: str) -> None:
        """Close every open connection with 1001 (going away) and `reason`."""
        await asyncio.gather(*(ws.refuse(reason, CloseCode.GOING_AWAY) for ws in list(self.open_sockets)))

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

    async def close_connections(_: web.Application) -> None:
        await endpoint.close_all("the server is shutting down")

    async def stop_model_thread(_: web.Application) -> None:
        await asyncio.get_running_loop().run_in_executor(None, endpoint.shutdown)

    app.on_shutdown.append(close_connections)
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
