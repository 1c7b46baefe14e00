"""Message framing of upstream's protocol, and the close reasons that must fit in a control frame."""

from __future__ import annotations

import pytest

from moshi.server.protocol import (
    MAX_CLOSE_REASON_BYTES,
    CloseCode,
    ProtocolError,
    audio_message,
    client_audio,
    close_reason,
    error_message,
    handshake_message,
    text_message,
)


def test_server_messages_start_with_their_kind() -> None:
    assert handshake_message() == b"\x00"
    assert audio_message(b"OggS...") == b"\x01OggS..."
    assert text_message(" héllo") == b"\x02" + " héllo".encode()
    assert error_message("busy") == b"\x05busy"


def test_client_audio_is_the_payload_of_an_audio_message() -> None:
    assert client_audio(b"\x01OggS\x00") == b"OggS\x00"
    assert client_audio(b"\x01") == b""


@pytest.mark.parametrize(("message", "reason"), [(b"", "empty message"), (b"\x00", "kind 0x00"),
                                                 (b"\x02hi", "kind 0x02"), (b"\xffhi", "kind 0xff")])
def test_anything_else_from_a_client_is_a_protocol_error(message: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason) as caught:
        client_audio(message)
    assert caught.value.close_code == CloseCode.UNSUPPORTED_DATA


def test_close_reasons_are_cut_to_fit_on_a_character_boundary() -> None:
    assert close_reason("short") == b"short"
    long = "é" * 100  # 200 bytes in UTF-8
    cut = close_reason(long)
    assert len(cut) <= MAX_CLOSE_REASON_BYTES and cut.decode("utf-8") == "é" * (MAX_CLOSE_REASON_BYTES // 2)
