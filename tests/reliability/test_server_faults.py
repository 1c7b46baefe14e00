"""`moshi.server` under the faults of real networks and clients: an idle client, a dead peer, a reader that does not
read, frames RFC 6455 forbids or aiohttp refuses, a server stopping. Each closes one connection with a reason sent to
the client and a warning naming the peer in the log, frees the model, and the next client is served. All on
127.0.0.1 with the demo model (random weights, CPU) and small timeouts."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from aiohttp import ClientSession, WSMsgType
from aiohttp.test_utils import TestServer
from raw_websocket import OPCODE_CLOSE, OPCODE_PING, OPCODE_TEXT, RawWebSocket, frame_bytes
from server.chat_helpers import (
    FRAME,
    TokenRecorder,
    chat_server,
    converse,
    expect_handshake,
    finished_conversations,
    load_demo_model,
    opus_pages,
    wav_frames,
)
from server.conftest import one_torch_thread  # noqa: F401  (autouse fixture)

from moshi.server.app import ServerSettings, build_app
from moshi.server.conversation import ConversationLimits
from moshi.server.served_model import ServedModel

SCENARIO_TIMEOUT_S = 60
FRAMES = 30


@pytest.fixture(scope="module")
def recorder() -> TokenRecorder:
    return TokenRecorder()


@pytest.fixture(scope="module")
def model(demo_checkpoint: Path, recorder: TokenRecorder) -> ServedModel:
    return load_demo_model(demo_checkpoint, recorder=recorder)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    return opus_pages(wav_frames(tmp_path_factory.mktemp("wav"), FRAMES * FRAME / 24000, seed=11))


def run(scenario) -> object:
    return asyncio.run(asyncio.wait_for(scenario, SCENARIO_TIMEOUT_S))


def warnings_naming_a_peer(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING
            and "closing the connection with 127.0.0.1:" in record.getMessage() and text in record.getMessage()]


def test_an_idle_client_is_closed_after_the_timeout_and_the_next_is_served(
        model: ServedModel, speech: list[bytes], caplog: pytest.LogCaptureFixture) -> None:
    idle_s = 0.5

    async def scenario() -> tuple:
        limits = ConversationLimits(idle_timeout_s=idle_s)
        async with chat_server(model, conversation=limits, busy_wait_s=20.0) as (client, app):
            idle = await client.ws_connect("/api/chat")
            await expect_handshake(idle)
            started = time.perf_counter()
            waiting = await client.ws_connect("/api/chat")  # waits for the model
            reason = await idle.receive(timeout=10)
            closing = await idle.receive(timeout=10)
            idle_for = time.perf_counter() - started
            await expect_handshake(waiting)
            await waiting.close()
            later = await converse(client, speech[:4])
            return reason, closing, idle_for, later, await finished_conversations(app, 3)

    with caplog.at_level(logging.INFO, logger="moshi.server"):
        reason, closing, idle_for, later, finished = run(scenario())
    assert reason.data == b"\x05" + f"no audio for {idle_s:g} s (idle timeout)".encode()
    assert closing.type == WSMsgType.CLOSE and closing.data == 1008 and "idle timeout" in closing.extra
    assert 0.9 * idle_s < idle_for < idle_s + 3  # both clocks start at the handshake
    assert "idle timeout" in finished[0].end_reason and len(later.audio) == 3
    assert warnings_naming_a_peer(caplog, "no audio for 0.5 s")


def test_a_dead_peer_is_found_by_the_heartbeat_and_the_model_freed(
        model: ServedModel, speech: list[bytes], caplog: pytest.LogCaptureFixture) -> None:
    """A client that took the handshake then neither sends, reads nor answers pings (a laptop gone to sleep): the
    ping after `heartbeat_s` of silence gets no pong within half of it, long before the idle timeout."""
    heartbeat_s = 0.4

    async def scenario() -> tuple:
        limits = ConversationLimits(idle_timeout_s=30.0)
        async with chat_server(model, conversation=limits, heartbeat_s=heartbeat_s) as (client, app):
            asleep = await RawWebSocket.connect(client.server.port)
            assert (await asleep.read_frame()).payload == b"\x00"
            started = time.perf_counter()
            (stats,) = await finished_conversations(app, 1, timeout_s=10)
            found_after = time.perf_counter() - started
            later = await converse(client, speech[:4])
            asleep.close()
            return stats, found_after, later

    with caplog.at_level(logging.INFO, logger="moshi.server"):
        stats, found_after, later = run(scenario())
    assert "no answer to a ping within 0.2 s" in stats.end_reason
    assert heartbeat_s < found_after < 5
    assert len(later.audio) == 3
    assert warnings_naming_a_peer(caplog, "the client is gone (heartbeat)")


def test_a_dead_peer_waiting_for_the_model_is_dropped(
        model: ServedModel, speech: list[bytes], caplog: pytest.LogCaptureFixture) -> None:
    """Waiting clients are pinged too: one that does not answer is dropped, and logged when its turn comes."""

    async def scenario() -> tuple:
        async with chat_server(model, heartbeat_s=0.4, busy_wait_s=20.0) as (client, app):
            holder = await client.ws_connect("/api/chat")
            await expect_handshake(holder)
            asleep = await RawWebSocket.connect(client.server.port)
            with pytest.raises(asyncio.TimeoutError):  # the holder answers the server's pings meanwhile
                await asyncio.wait_for(holder.receive(), 1.5)
            await holder.close()
            later = await converse(client, speech[:4])
            asleep.close()
            return later, await finished_conversations(app, 3)

    with caplog.at_level(logging.INFO, logger="moshi.server"):
        later, finished = run(scenario())
    assert "client closed" in finished[0].end_reason and len(later.audio) == 3
    assert finished[1].end_reason.startswith("closed by the server before the conversation: no answer to a ping")
    assert warnings_naming_a_peer(caplog, "the client is gone (heartbeat)")


def test_a_client_that_does_not_read_loses_old_reply_frames_counted(
        model: ServedModel, recorder: TokenRecorder, speech: list[bytes], caplog: pytest.LogCaptureFixture) -> None:
    """All audio arrives at once, then the client reads nothing until the model has answered all of it and a little
    longer than the frame age limit: only what the small socket buffers held gets through, every other reply frame
    waited too long in the queue and is dropped and counted (the queue is as long as the conversation, so no frame is
    dropped for room)."""
    max_age_s = 0.3

    async def scenario() -> tuple:
        limits = ConversationLimits(max_frame_age_s=max_age_s, inbox_frames=FRAMES, outbox_frames=FRAMES)
        async with chat_server(model, conversation=limits, heartbeat_s=None, send_buffer_bytes=1024) as (client, app):
            reader = await RawWebSocket.connect(client.server.port, receive_buffer_bytes=1024)
            assert (await reader.read_frame()).payload == b"\x00"
            recorder.text.clear()
            for page in speech:
                await reader.send_frame(b"\x01" + page)
            deadline = time.perf_counter() + 30
            while len(recorder.text) < FRAMES and time.perf_counter() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(2 * max_age_s)
            audio = []
            while True:
                try:
                    frame = await reader.read_frame(timeout_s=1.0)
                except asyncio.TimeoutError:
                    break
                if frame.payload[:1] == b"\x01":
                    audio.append(frame.payload)
            await reader.send_frame(b"\x03\xe8", opcode=OPCODE_CLOSE)
            assert (await reader.read_frame()).opcode == OPCODE_CLOSE
            reader.close()
            return audio, await finished_conversations(app, 1)

    with caplog.at_level(logging.INFO, logger="moshi.server"):
        audio, (stats,) = run(scenario())
    assert stats.frames_in == FRAMES and stats.dropped_in == 0 and stats.dropped_out == 0
    assert stats.frames_out + stats.expired_out == FRAMES - 1
    assert stats.expired_out >= FRAMES // 2 and len(audio) == stats.frames_out
    assert f"{stats.expired_out} waited over {max_age_s:g} s" in caplog.text
    assert "the client reads too slowly" in caplog.text


ANNOUNCED_10_MB = 10 << 20
REFUSED_FRAMES = {  # name: (raw bytes after the handshake given test audio pages, close code, a part of the reason)
    "a 10 MB message": (lambda pages: frame_bytes(b"\x01" + bytes(4096), announced_length=10 << 20), 1009,
                        "message too big (the limit is 1 MiB"),
    "invalid UTF-8": (lambda pages: frame_bytes(b"\xff\xfe\xfd", OPCODE_TEXT), 1007, "invalid UTF-8"),
    "a reserved data opcode": (lambda pages: frame_bytes(b"\x01abc", 0x3), 1002, "reserved opcode"),
    "a reserved control opcode": (lambda pages: frame_bytes(b"", 0xB), 1002, "reserved opcode"),
    "a reserved bit": (lambda pages: frame_bytes(b"\x01abc", rsv=2), 1002, "reserved bits"),
    "an unmasked frame": (lambda pages: frame_bytes(b"\x01" + pages[0], masked=False), 1002, "unmasked frame"),
    "an unmasked frame after masked ones": (  # a ping, audio with a 16-bit length, then the unmasked frame
        lambda pages: (frame_bytes(b"", OPCODE_PING) + frame_bytes(b"\x01" + pages[0])
                       + frame_bytes(b"\x01" + pages[1], masked=False)), 1002, "unmasked frame"),
}


@pytest.mark.parametrize("case", sorted(REFUSED_FRAMES))
def test_a_refused_frame_closes_with_a_reason_and_the_next_is_served(
        model: ServedModel, speech: list[bytes], case: str, caplog: pytest.LogCaptureFixture) -> None:
    make_bytes, close_code, reason = REFUSED_FRAMES[case]

    async def scenario() -> tuple:
        async with chat_server(model) as (client, app):
            raw = await RawWebSocket.connect(client.server.port)
            assert (await raw.read_frame()).payload == b"\x00"
            await raw.send_raw(make_bytes(speech))
            frames, closing = await raw.read_until_close()
            raw.close()
            later = await converse(client, speech[:4])
            return frames, closing, later, await finished_conversations(app, 2)

    with caplog.at_level(logging.INFO, logger="moshi.server"):
        frames, closing, later, finished = run(scenario())
    assert [frame.payload[:1] for frame in frames] == [b"\x05"] and reason in frames[0].payload.decode()
    assert closing.close_code == close_code and closing.close_reason in frames[0].payload.decode()
    assert reason in finished[0].end_reason and len(later.audio) == 3
    assert warnings_naming_a_peer(caplog, reason)


def test_stopping_the_server_closes_each_conversation_with_a_reason(model: ServedModel) -> None:
    async def scenario() -> tuple:
        server = TestServer(build_app(model, ServerSettings(static_dir=None)), host="127.0.0.1")
        await server.start_server()
        async with ClientSession() as session:
            ws = await session.ws_connect(server.make_url("/api/chat"))
            await expect_handshake(ws)
            stopping = asyncio.create_task(server.close())
            reason, closing = await ws.receive(timeout=10), await ws.receive(timeout=10)
            await stopping
            return reason, closing

    reason, closing = run(scenario())
    assert reason.data == b"\x05the server is shutting down"
    assert closing.type == WSMsgType.CLOSE and closing.data == 1001
