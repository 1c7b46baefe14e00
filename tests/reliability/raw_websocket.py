"""A websocket client written by hand from RFC 6455 over a bare socket, for what a well-behaved client library never
does: unmasked frames, reserved opcodes, a message announcing 10 MB, never reading, never answering pings."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import os
import socket
import struct

ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OPCODE_TEXT, OPCODE_BINARY, OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG = 0x1, 0x2, 0x8, 0x9, 0xA


@dataclasses.dataclass
class Frame:
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int:
        return struct.unpack("!H", self.payload[:2])[0]

    @property
    def close_reason(self) -> str:
        return self.payload[2:].decode("utf-8")


def frame_bytes(payload: bytes, opcode: int = OPCODE_BINARY, masked: bool = True, rsv: int = 0,
                announced_length: int | None = None) -> bytes:
    """One final frame; `rsv` sets the reserved bits (0 to 7); `announced_length` overrides the header's length."""
    length = len(payload) if announced_length is None else announced_length
    header = bytes([0x80 | rsv << 4 | opcode])
    mask_bit = 0x80 if masked else 0
    if length < 126:
        header += bytes([mask_bit | length])
    elif length < 1 << 16:
        header += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        header += bytes([mask_bit | 127]) + struct.pack("!Q", length)
    if not masked:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(byte ^ key[index % 4] for index, byte in enumerate(payload))


class RawWebSocket:
    """A client connection on a non-blocking socket: it reads only when asked (`read_frame`), so that a test can
    make it never read, and answers nothing by itself (no pongs)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def connect(cls, port: int, path: str = "/api/chat", receive_buffer_bytes: int | None = None,
                      timeout_s: float = 10.0) -> RawWebSocket:
        """Open the connection to 127.0.0.1:`port` and do the opening handshake."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer_bytes is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer_bytes)
        sock.setblocking(False)
        ws = cls(sock)
        await asyncio.wait_for(ws.loop.sock_connect(sock, ("127.0.0.1", port)), timeout_s)
        key = base64.b64encode(os.urandom(16))
        await ws.send_raw(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key
                          + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        response = await ws._read_until(b"\r\n\r\n", timeout_s)
        accept = base64.b64encode(hashlib.sha1(key + ACCEPT_GUID).digest())
        assert response.startswith(b"HTTP/1.1 101") and accept in response, response
        return ws

    async def send_raw(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def send_frame(self, payload: bytes, opcode: int = OPCODE_BINARY, **options: object) -> None:
        await self.send_raw(frame_bytes(payload, opcode, **options))

    async def read_frame(self, timeout_s: float = 10.0) -> Frame:
        """The server's next frame (servers do not mask)."""
        header = await self._read_exactly(2, timeout_s)
        length = header[1] & 0x7F
        if length == 126:
            length = struct.unpack("!H", await self._read_exactly(2, timeout_s))[0]
        elif length == 127:
            length = struct.unpack("!Q", await self._read_exactly(8, timeout_s))[0]
        return Frame(header[0] & 0x0F, await self._read_exactly(length, timeout_s))

    async def read_until_close(self, timeout_s: float = 10.0) -> tuple[list[Frame], Frame]:
        """The data frames (pings and pongs left out) until the server's close frame, and that close frame."""
        frames = []
        while (frame := await self.read_frame(timeout_s)).opcode != OPCODE_CLOSE:
            if frame.opcode not in (OPCODE_PING, OPCODE_PONG):
                frames.append(frame)
        return frames, frame

    def close(self) -> None:
        self.sock.close()

    async def _read_exactly(self, count: int, timeout_s: float) -> bytes:
        while len(self.buffer) < count:
            await self._receive_more(timeout_s)
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    async def _read_until(self, marker: bytes, timeout_s: float) -> bytes:
        while marker not in self.buffer:
            await self._receive_more(timeout_s)
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    async def _receive_more(self, timeout_s: float) -> None:
        chunk = await asyncio.wait_for(self.loop.sock_recv(self.sock, 1 << 16), timeout_s)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk
