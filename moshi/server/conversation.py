"""One conversation on one websocket: three tasks joined by two bounded queues.

    receive: websocket -> Ogg Opus decoder -> 80 ms frames -> inbox
    step:    inbox -> model thread (`ServedModel.step`) -> outbox
    send:    outbox -> Ogg Opus encoder -> websocket (audio, then the frame's text piece)

The model runs on the server's single model thread so that the event loop keeps receiving and sending meanwhile. Both
queues drop their oldest frame when full (a model slower than real time, a client that reads too slowly), counted in
the conversation's stats and logged; memory stays bounded either way. The conversation ends when the client closes
the socket or sends something the protocol does not allow (the connection is then closed with the reason); a frame
already on the model thread finishes there before the next conversation's first model call.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import sphn
from aiohttp import WSMsgType, web

from .frame_queue import DroppingQueue
from .protocol import (
    CloseCode,
    ProtocolError,
    audio_message,
    client_audio,
    close_reason,
    error_message,
    text_message,
)
from .served_model import ReplyFrame, ServedModel

logger = logging.getLogger("moshi.server")

ModelCall = Callable[..., Awaitable[Any]]
"""Runs `function(*args)` on the model thread: `await run_on_model(function, *args)`."""

LATENCY_HISTORY = 1 << 16
"""Per-frame latencies kept per conversation (about 87 minutes of 80 ms frames)."""


@dataclasses.dataclass
class ConversationStats:
    """What one conversation did. Latencies are in milliseconds, per reply frame: `latency_ms` from the arrival of the
    message that completed the input frame to the reply frame sent; `compute_ms` the model's step alone."""

    peer: str
    frames_in: int = 0
    frames_out: int = 0
    text_pieces: int = 0
    dropped_in: int = 0
    dropped_out: int = 0
    latency_ms: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=LATENCY_HISTORY))
    compute_ms: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=LATENCY_HISTORY))
    end_reason: str = ""

    def summary(self) -> str:
        median = f"{np.median(self.latency_ms):.1f} ms" if self.latency_ms else "n/a"
        return (f"{self.frames_in} frames in, {self.frames_out} out, {self.text_pieces} text pieces, median latency "
                f"{median}, dropped {self.dropped_in} input frames (model too slow) and {self.dropped_out} output "
                f"frames (client too slow); ended: {self.end_reason}")


@dataclasses.dataclass
class _InputFrame:
    pcm: np.ndarray
    received_at: float


@dataclasses.dataclass
class _OutputFrame:
    reply: ReplyFrame
    received_at: float


class Conversation:
    """Serve one websocket that already holds the model and has received the handshake; `await run()` until it ends."""

    def __init__(self, ws: web.WebSocketResponse, model: ServedModel, run_on_model: ModelCall, peer: str,
                 inbox_frames: int, outbox_frames: int) -> None:
        self.ws, self.model, self.run_on_model = ws, model, run_on_model
        self.inbox: DroppingQueue[_InputFrame] = DroppingQueue(inbox_frames)
        self.outbox: DroppingQueue[_OutputFrame] = DroppingQueue(outbox_frames)
        self.stats = ConversationStats(peer)

    async def run(self) -> ConversationStats:
        """Serve until the client leaves. Cancelling `run` (aiohttp may cancel the handler of a lost connection) ends
        the conversation the same way; in both cases a frame already on the model thread still finishes there before
        any later model call, since that thread runs calls in order."""
        tasks = (asyncio.create_task(self._step_frames()), asyncio.create_task(self._send_replies()))
        try:
            self.stats.end_reason = await self._receive()
        except asyncio.CancelledError:
            self.stats.end_reason = "cancelled (connection lost or server stopping)"
            raise
        finally:
            self.inbox.close(discard=True)
            for task in tasks:
                task.cancel()
            self.stats.dropped_in, self.stats.dropped_out = self.inbox.dropped, self.outbox.dropped
            logger.info("conversation with %s: %s", self.stats.peer, self.stats.summary())
        return self.stats

    async def _receive(self) -> str:
        """Read the client's audio into frames until the socket closes; returns why the conversation ended."""
        decoder = sphn.OpusStreamReader(self.model.sample_rate)
        pending = np.zeros(0, dtype=np.float32)
        try:
            async for message in self.ws:
                if message.type == WSMsgType.ERROR:
                    return f"websocket error: {self.ws.exception()}"
                if message.type != WSMsgType.BINARY:
                    raise ProtocolError(f"{message.type.name.lower()} message (the protocol is binary)",
                                        CloseCode.UNSUPPORTED_DATA)
                received_at = time.perf_counter()
                pending = np.concatenate([pending, self._decode(decoder, client_audio(message.data))])
                pending = self._queue_frames(pending, received_at)
        except ProtocolError as error:
            return await self._refuse(error)
        return "client closed the connection" if self.ws.close_code in (None, CloseCode.NORMAL) else (
            f"connection closed with code {self.ws.close_code}")

    @staticmethod
    def _decode(decoder: sphn.OpusStreamReader, ogg: bytes) -> np.ndarray:
        try:
            return decoder.append_bytes(ogg)
        except Exception as error:  # the decoder reports damaged streams as ValueError; any failure means bad audio
            raise ProtocolError(f"bad Ogg Opus audio: {error}", CloseCode.INVALID_PAYLOAD) from error

    def _queue_frames(self, pending: np.ndarray, received_at: float) -> np.ndarray:
        """Queue every whole frame of `pending`; returns the samples left over."""
        size = self.model.frame_size
        whole = len(pending) - len(pending) % size
        for start in range(0, whole, size):
            if not self.inbox.put(_InputFrame(pending[start: start + size], received_at)) and self.inbox.dropped == 1:
                logger.warning("%s: the model is slower than real time, dropping the oldest input frames",
                               self.stats.peer)
        return pending[whole:]

    async def _refuse(self, error: ProtocolError) -> str:
        logger.warning("closing the connection with %s: %s", self.stats.peer, error)
        if not self.ws.closed:
            with contextlib.suppress(ConnectionError):  # the client may be gone already
                await self.ws.send_bytes(error_message(str(error)))
            await self.ws.close(code=error.close_code, message=close_reason(str(error)))
        return f"protocol error: {error}"

    async def _step_frames(self) -> None:
        try:
            while (frame := await self.inbox.get()) is not None:
                started = time.perf_counter()
                reply = await self.run_on_model(self.model.step, frame.pcm)
                self.stats.frames_in += 1
                if reply is None:
                    continue
                self.stats.compute_ms.append(1000 * (time.perf_counter() - started))
                if not self.outbox.put(_OutputFrame(reply, frame.received_at)) and self.outbox.dropped == 1:
                    logger.warning("%s: the client reads too slowly, dropping the oldest reply frames",
                                   self.stats.peer)
        except Exception:
            logger.exception("the model failed during the conversation with %s", self.stats.peer)
            await self.ws.close(code=CloseCode.INTERNAL_ERROR, message=b"the model failed; see the server log")
        finally:
            self.outbox.close()

    async def _send_replies(self) -> None:
        encoder = sphn.OpusStreamWriter(self.model.sample_rate)
        try:
            while (frame := await self.outbox.get()) is not None:
                ogg = encoder.append_pcm(frame.reply.pcm)
                if ogg:
                    await self.ws.send_bytes(audio_message(ogg))
                if frame.reply.text:
                    await self.ws.send_bytes(text_message(frame.reply.text))
                    self.stats.text_pieces += 1
                self.stats.frames_out += 1
                self.stats.latency_ms.append(1000 * (time.perf_counter() - frame.received_at))
                logger.debug("%s: reply frame sent %.1f ms after its input frame arrived", self.stats.peer,
                             self.stats.latency_ms[-1])
        except ConnectionError as error:
            logger.info("%s: cannot send any more (%s)", self.stats.peer, error)
        except Exception:
            logger.exception("sending to %s failed", self.stats.peer)
            await self.ws.close(code=CloseCode.INTERNAL_ERROR, message=b"sending failed; see the server log")
