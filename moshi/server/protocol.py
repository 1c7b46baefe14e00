"""Upstream Moshi's websocket protocol on `/api/chat`: binary messages whose first byte says what follows.

    0x00  handshake   server -> client, once the model is ready for this conversation (no payload needed)
    0x01  audio       both ways: Ogg pages of an Opus stream, 24 kHz mono
    0x02  text        server -> client: a UTF-8 text piece of the model's speech
    0x05  error       server -> client: a UTF-8 explanation, sent before the server closes the connection

Clients send audio only. Anything else they send (text frames, empty messages, other kinds) is a protocol error that
closes their connection. Every close the server makes sends an error message with the reason first, then the close
frame with one of the codes below and the reason (cut to fit); `moshi.server.websocket` does the closing.
"""

from __future__ import annotations

import enum


class MessageKind(enum.IntEnum):
    HANDSHAKE = 0
    AUDIO = 1
    TEXT = 2
    ERROR = 5


class CloseCode(enum.IntEnum):
    """Websocket close codes (RFC 6455, section 7.4.1) the server uses."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013


MAX_CLOSE_REASON_BYTES = 123
"""A close frame's reason must fit in a 125-byte control frame after the 2-byte code."""


class ProtocolError(Exception):
    """A client message the server cannot accept; `close_code` goes into the close frame with the message."""

    def __init__(self, reason: str, close_code: CloseCode) -> None:
        super().__init__(reason)
        self.close_code = close_code


def handshake_message() -> bytes:
    return bytes([MessageKind.HANDSHAKE])


def audio_message(ogg_pages: bytes) -> bytes:
    return bytes([MessageKind.AUDIO]) + ogg_pages


def text_message(piece: str) -> bytes:
    return bytes([MessageKind.TEXT]) + piece.encode("utf-8")


def error_message(explanation: str) -> bytes:
    return bytes([MessageKind.ERROR]) + explanation.encode("utf-8")


def client_audio(message: bytes) -> bytes:
    """The Ogg bytes of a client's binary message; raises `ProtocolError` for anything but an audio message."""
    if not message:
        raise ProtocolError("empty message (expected 0x01 followed by Ogg Opus bytes)", CloseCode.UNSUPPORTED_DATA)
    kind = message[0]
    if kind != MessageKind.AUDIO:
        raise ProtocolError(f"unknown message kind 0x{kind:02x} (clients send 0x01 audio only)",
                            CloseCode.UNSUPPORTED_DATA)
    return message[1:]


def close_reason(text: str) -> bytes:
    """`text` as a close-frame reason, cut to the allowed size on a character boundary."""
    encoded = text.encode("utf-8")
    if len(encoded) <= MAX_CLOSE_REASON_BYTES:
        return encoded
    return encoded[:MAX_CLOSE_REASON_BYTES].decode("utf-8", errors="ignore").encode("utf-8")
