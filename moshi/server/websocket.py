"""The websocket of one `/api/chat` connection: aiohttp's, plus what RFC 6455 and a real-time audio stream ask of it.

- **Closes with a reason.** `ChatSocket.refuse` ends a connection the server gives up on: an error message (0x05) with
  the reason, the close frame with its code and the reason, a warning in the log naming the peer; all within
  `CLOSE_TIMEOUT_S`, after which a client that does not read has its connection dropped. aiohttp's reader closes the
  connection on its own when it refuses a frame (a message over `MAX_MESSAGE_BYTES`, invalid UTF-8, a reserved opcode
  or reserved bits, ...), before `receive` returns the error: `ChatSocket.close` adds the reason to those closes.
- **Heartbeats.** aiohttp pings a client that has sent nothing for `heartbeat_s`; one that does not answer within half
  that time is taken for gone (a laptop asleep, a cable pulled) and its connection dropped.
- **Masked frames only.** RFC 6455 section 5.1: the server MUST close the connection upon an unmasked client frame.
  aiohttp's reader accepts them (it unmasks a frame only when its mask bit is set), so `ConnectionTap`, placed between
  the connection's transport and aiohttp's protocol, follows the frame headers of the incoming bytes and stops at the
  first unmasked frame, which is refused with 1002.
- **Small send buffers.** A client that reads more slowly than the audio comes should make the conversation's reply
  queue wait (where stale frames are dropped and counted), not fill megabytes of socket buffers with ever staler
  audio: the kernel holds at most `send_buffer_bytes` not yet sent (TCP_NOTSENT_LOWAT, on Linux and macOS), the
  transport as much again, and `send_message` waits while the transport is over that mark.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from .protocol import CloseCode, close_reason, error_message

logger = logging.getLogger("moshi.server")

MAX_MESSAGE_BYTES = 1 << 20
"""Largest client message accepted (an Ogg page is at most 65,307 bytes); aiohttp refuses larger ones with 1009."""
CLOSE_TIMEOUT_S = 2.0
"""How long a refused client has to take the reason and answer the close frame before its connection is dropped."""
SEND_BUFFER_BYTES = 4096
"""Unsent bytes the kernel, and then the transport, may hold for one client: about a second of the reply's Opus
(about 3.9 kB/s with its text pieces) each."""

READER_REFUSALS = {
    CloseCode.PROTOCOL_ERROR: "websocket protocol error: a reserved opcode or reserved bits, or a malformed frame "
                              "(RFC 6455 section 5)",
    CloseCode.INVALID_PAYLOAD: "invalid UTF-8 in a text frame (and this protocol is binary)",
    CloseCode.MESSAGE_TOO_BIG: f"message too big (the limit is {MAX_MESSAGE_BYTES >> 20} MiB; audio messages are "
                               f"Ogg pages of at most 64 kB)",
}
"""Why aiohttp's reader closes a connection, by the close code it uses (its own message goes to the log)."""
UNMASKED_FRAME = "unmasked frame (RFC 6455 section 5.1: clients mask every frame)"

WEBSOCKET_MASK_BIT = 0x80
WEBSOCKET_LENGTH_BITS = 0x7F
EXTENDED_LENGTH_BYTES = {126: 2, 127: 8}
"""A 7-bit length of 126 or 127 announces a 16-bit or 64-bit length in the next bytes (RFC 6455 section 5.2)."""
MASKING_KEY_BYTES = 4


class FrameHeaders:
    """Follows the frame boundaries of the bytes a client sends, from a frame start on (RFC 6455 section 5.2): each
    header (2 to 14 bytes) says whether the frame is masked and how many payload bytes to skip to the next one."""

    def __init__(self) -> None:
        self._header = bytearray()
        self._payload_left = 0

    def first_unmasked(self, data: bytes) -> int | None:
        """Where in `data` the first unmasked frame starts (0 when its header began in earlier data), None if every
        frame header in `data` is masked."""
        position, start = 0, 0
        while position < len(data):
            if self._payload_left:
                skipped = min(self._payload_left, len(data) - position)
                position += skipped
                self._payload_left -= skipped
                continue
            if not self._header:
                start = position
            self._header.append(data[position])
            position += 1
            if len(self._header) < 2:
                continue
            if not self._header[1] & WEBSOCKET_MASK_BIT:
                return start
            if len(self._header) == self._header_size():
                self._payload_left = self._payload_length()
                self._header.clear()
        return None

    def _header_size(self) -> int:
        return 2 + EXTENDED_LENGTH_BYTES.get(self._header[1] & WEBSOCKET_LENGTH_BITS, 0) + MASKING_KEY_BYTES

    def _payload_length(self) -> int:
        length = self._header[1] & WEBSOCKET_LENGTH_BITS
        extended = EXTENDED_LENGTH_BYTES.get(length)
        return length if extended is None else int.from_bytes(self._header[2: 2 + extended], "big")


class ConnectionTap(asyncio.Protocol):
    """Sits between a connection's transport and aiohttp's protocol from the websocket handshake on: passes incoming
    bytes on up to the first unmasked frame (then calls `on_unmasked` once and passes nothing more), and tells whether
    the transport takes more output (`writable`)."""

    def __init__(self, inner: asyncio.Protocol, on_unmasked: Callable[[], None]) -> None:
        self.inner, self.on_unmasked = inner, on_unmasked
        self.headers = FrameHeaders()
        self.refused = False
        self._writable = asyncio.Event()
        self._writable.set()

    @classmethod
    def install(cls, transport: asyncio.Transport, on_unmasked: Callable[[], None]) -> ConnectionTap:
        tap = cls(transport.get_protocol(), on_unmasked)
        transport.set_protocol(tap)
        return tap

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        unmasked_at = self.headers.first_unmasked(data)
        if unmasked_at is None:
            self.inner.data_received(data)
            return
        self.refused = True
        if unmasked_at:
            self.inner.data_received(data[:unmasked_at])
        self.on_unmasked()

    async def writable(self) -> None:
        """Wait while the transport holds more output than its high-water mark."""
        await self._writable.wait()

    def pause_writing(self) -> None:
        self._writable.clear()
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self._writable.set()
        self.inner.resume_writing()

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._writable.set()  # a waiting sender goes on and finds the connection closed
        self.inner.connection_lost(exc)


def limit_send_buffers(transport: asyncio.Transport, limit_bytes: int) -> None:
    """At most `limit_bytes` unsent in the kernel (where TCP_NOTSENT_LOWAT exists) and over the transport's mark."""
    sock = transport.get_extra_info("socket")
    if hasattr(socket, "TCP_NOTSENT_LOWAT") and sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, limit_bytes)
    transport.set_write_buffer_limits(high=limit_bytes)


class ChatSocket(web.WebSocketResponse):
    """The server side of one `/api/chat` websocket (see the module's docstring). `peer` names the client in the log;
    `heartbeat_s` None sends no pings; `refusal` is the reason the server closed the connection, None if it did not."""

    def __init__(self, peer: str, heartbeat_s: float | None = 10.0, send_buffer_bytes: int = SEND_BUFFER_BYTES) -> None:
        super().__init__(max_msg_size=MAX_MESSAGE_BYTES, heartbeat=heartbeat_s, timeout=CLOSE_TIMEOUT_S)
        self.peer, self.heartbeat_s, self.send_buffer_bytes = peer, heartbeat_s, send_buffer_bytes
        self.refusal: str | None = None
        self._tap: ConnectionTap | None = None
        self._transport: asyncio.Transport | None = None
        self._opened = False
        self._refusing: asyncio.Task | None = None

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        self._transport = request.transport
        if self._transport is not None:  # None when the client has left already; aiohttp's prepare then fails
            self._tap = ConnectionTap.install(self._transport, self._refuse_unmasked_frame)
            limit_send_buffers(self._transport, self.send_buffer_bytes)
        writer = await super().prepare(request)
        self._opened = True
        if self._tap is not None and self._tap.refused:  # the client did not wait for the handshake's answer
            self._refuse_unmasked_frame()
        return writer

    async def send_message(self, message: bytes) -> None:
        """Send one protocol message once the transport takes more output (the sender waits, not the buffers)."""
        if self._tap is not None:
            await self._tap.writable()
        await self.send_bytes(message)

    async def refuse(self, reason: str, code: CloseCode) -> None:
        """End the connection because of `reason`: logged as a warning with the peer; when the connection still
        works, the client gets 0x05 + `reason`, then the close frame (`code`, the reason cut to fit), within
        `CLOSE_TIMEOUT_S`. Only the first refusal counts; cancelling the caller does not stop it."""
        await asyncio.shield(self._start_refusal(reason, code))

    def _start_refusal(self, reason: str, code: CloseCode) -> asyncio.Task:
        if self._refusing is None:
            self.refusal = reason
            logger.warning("closing the connection with %s: %s", self.peer, reason)
            self._refusing = asyncio.ensure_future(self._close_with_reason(reason, code))
        return self._refusing

    async def refuse_silent_peer(self) -> None:
        """`refuse` once aiohttp's heartbeat found no answer to its ping (aiohttp has closed the connection then)."""
        await self.refuse(f"no answer to a ping within {(self.heartbeat_s or 0) / 2:g} s: the client is gone "
                          f"(heartbeat)", CloseCode.GOING_AWAY)

    async def close(self, *, code: int = CloseCode.NORMAL, message: bytes = b"", drain: bool = True) -> bool:
        """aiohttp's close; when aiohttp's reader refused a frame (aiohttp closes with the code alone), the client is
        told why first."""
        if not message and code in READER_REFUSALS and self._refusing is None and not self.closed:
            await self.refuse(READER_REFUSALS[CloseCode(code)], CloseCode(code))
            return True
        return await super().close(code=code, message=message, drain=drain)

    async def _close_with_reason(self, reason: str, code: CloseCode) -> None:
        if self.closed:  # aiohttp closed it already (no answer to a ping): nothing can reach the client
            self._drop()
            return
        try:
            await asyncio.wait_for(self._explain_and_close(reason, code), CLOSE_TIMEOUT_S)
        except asyncio.TimeoutError:
            logger.warning("%s did not take the close within %g s: connection dropped", self.peer, CLOSE_TIMEOUT_S)
            self._drop()

    async def _explain_and_close(self, reason: str, code: CloseCode) -> None:
        with contextlib.suppress(ConnectionError):  # the client may be gone already
            await self.send_message(error_message(reason))
        await super().close(code=code, message=close_reason(reason))

    def _refuse_unmasked_frame(self) -> None:
        if self._opened:
            self._start_refusal(UNMASKED_FRAME, CloseCode.PROTOCOL_ERROR)

    def _drop(self) -> None:
        if self._transport is not None:
            self._transport.abort()
