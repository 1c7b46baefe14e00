"""One conversation on one websocket: three tasks joined by two bounded queues.

    receive: websocket -> Ogg Opus decoder -> 80 ms frames -> inbox
    step:    inbox -> model thread (`ServedModel.step`) -> outbox
    send:    outbox -> Ogg Opus encoder -> websocket (audio, then the frame's text piece)

The model runs on the server's single model thread so that the event loop keeps receiving and sending meanwhile. Both
queues drop their oldest frame when full (a model slower than real time, a client that reads too slowly), and the
outbox also drops the reply frames that waited longer than `ConversationLimits.max_frame_age_s` for the client to take
them; all counted in the conversation's stats and logged, so memory stays bounded and the audio a slow reader gets
stays recent. The conversation ends when the client closes the socket or goes away, sends something the protocol does
not allow, or sends no audio for `ConversationLimits.idle_timeout_s` (the server then closes the connection with the
reason: `ChatSocket.refuse`); a frame already on the model thread finishes there before the next conversation's first
model call. Its closing log lines give the stats and the talk report of the model's reply (`moshi.utils.talk_report`:
text tokens per minute, PAD, silence and repeated 4-grams, overall and per 10 s bin; the bins at DEBUG level).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import sphn
from aiohttp import WSMessage, WSMsgType

from ..utils.talk_report import TalkMeter, bins_line, summary_line
from .frame_queue import DroppingQueue
from .protocol import CloseCode, ProtocolError, audio_message, client_audio, text_message
from .served_model import ReplyFrame, ServedModel
from .websocket import ChatSocket

logger = logging.getLogger("moshi.server")

ModelCall = Callable[..., Awaitable[Any]]
"""Runs `function(*args)` on the model thread: `await run_on_model(function, *args)`."""

LATENCY_HISTORY = 1 << 16
"""Per-frame latencies kept per conversation (about 87 minutes of 80 ms frames)."""
CONNECTION_ENDS = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)


@dataclasses.dataclass(frozen=True)
class ConversationLimits:
    """`idle_timeout_s`: the longest a client may send no audio before the server closes the conversation (None: no
    limit). `max_frame_age_s`: the longest a reply frame waits for the client to take it before it is dropped.
    `inbox_frames`, `outbox_frames`: the most 80 ms frames waiting for the model / for the client before the oldest are
    dropped (about one second each)."""

    idle_timeout_s: float | None = 30.0
    max_frame_age_s: float = 1.0
    inbox_frames: int = 12
    outbox_frames: int = 12


@dataclasses.dataclass
class ConversationStats:
    """What one conversation did. Latencies are in milliseconds, per reply frame: `latency_ms` from the arrival of the
    message that completed the input frame to the reply frame sent; `compute_ms` the model's step alone. Reply frames
    dropped: `dropped_out` when the queue was full, `expired_out` after waiting over `limits.max_frame_age_s`. `talk`
    counts what the model said, frame by frame (the reply frames dropped for a slow client included)."""

    peer: str
    talk: TalkMeter
    limits: ConversationLimits = dataclasses.field(default_factory=ConversationLimits)
    frames_in: int = 0
    frames_out: int = 0
    text_pieces: int = 0
    dropped_in: int = 0
    dropped_out: int = 0
    expired_out: int = 0
    latency_ms: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=LATENCY_HISTORY))
    compute_ms: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=LATENCY_HISTORY))
    end_reason: str = ""

    def summary(self) -> str:
        median = f"{np.median(self.latency_ms):.1f} ms" if self.latency_ms else "n/a"
        limits = self.limits
        return (f"{self.frames_in} frames in, {self.frames_out} out, {self.text_pieces} text pieces, median latency "
                f"{median}, dropped {self.dropped_in} input frames (model too slow; queue of {limits.inbox_frames}) "
                f"and {self.dropped_out + self.expired_out} reply frames (client too slow: {self.expired_out} waited "
                f"over {limits.max_frame_age_s:g} s, {self.dropped_out} over the queue of {limits.outbox_frames}); "
                f"ended: {self.end_reason}")


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

    def __init__(self, ws: ChatSocket, model: ServedModel, run_on_model: ModelCall,
                 limits: ConversationLimits | None = None) -> None:
        self.ws, self.model, self.run_on_model = ws, model, run_on_model
        self.limits = limits or ConversationLimits()
        self.inbox: DroppingQueue[_InputFrame] = DroppingQueue(self.limits.inbox_frames,
                                                               on_first_drop=self._warn_model_too_slow)
        self.outbox: DroppingQueue[_OutputFrame] = DroppingQueue(self.limits.outbox_frames,
                                                                 max_age_s=self.limits.max_frame_age_s,
                                                                 on_first_drop=self._warn_client_too_slow)
        self.stats = ConversationStats(ws.peer, TalkMeter(1, model.frame_seconds, model.silent_text_tokens),
                                       self.limits)
        self._last_audio_at = 0.0

    async def run(self) -> ConversationStats:
        """Serve until the conversation ends. Cancelling `run` (aiohttp may cancel the handler of a lost connection)
        ends the conversation the same way; in both cases a frame already on the model thread still finishes there
        before any later model call, since that thread runs calls in order."""
        self._last_audio_at = time.perf_counter()  # the idle timeout counts from the handshake
        tasks = [asyncio.create_task(self._step_frames()), asyncio.create_task(self._send_replies())]
        if self.limits.idle_timeout_s is not None:
            tasks.append(asyncio.create_task(self._close_when_idle(self.limits.idle_timeout_s)))
        try:
            self.stats.end_reason = await self._receive()
        except asyncio.CancelledError:
            self.stats.end_reason = "cancelled (connection lost or server stopping)"
            raise
        finally:
            self.inbox.close(discard=True)
            for task in tasks:
                task.cancel()
            self.stats.dropped_in = self.inbox.dropped
            self.stats.dropped_out, self.stats.expired_out = self.outbox.dropped, self.outbox.expired
            self._log_end()
        return self.stats

    def _log_end(self) -> None:
        """The conversation's closing log lines (the one place that reports on a finished conversation): its stats,
        then its talk report (the per-bin figures at DEBUG level)."""
        peer, talk = self.stats.peer, self.stats.talk
        logger.info("conversation with %s: %s", peer, self.stats.summary())
        (figures,) = talk.figures()
        logger.info("conversation with %s, talk: %s", peer,
                    summary_line(figures, talk.settings.ngram, talk.bin_seconds))
        logger.debug("conversation with %s, talk %s", peer, bins_line(figures, talk.bin_seconds))

    async def _receive(self) -> str:
        """Read the client's audio into frames until the conversation ends; returns why it ended."""
        decoder = sphn.OpusStreamReader(self.model.sample_rate)
        pending = np.zeros(0, dtype=np.float32)
        try:
            while (message := await self.ws.receive()).type not in CONNECTION_ENDS:
                if message.type != WSMsgType.BINARY:
                    raise ProtocolError(f"{message.type.name.lower()} message (the protocol is binary)",
                                        CloseCode.UNSUPPORTED_DATA)
                self._last_audio_at = time.perf_counter()
                pending = np.concatenate([pending, self._decode(decoder, client_audio(message.data))])
                pending = self._queue_frames(pending, self._last_audio_at)
        except ProtocolError as error:
            await self.ws.refuse(str(error), error.close_code)
            return f"closed by the server: {error}"
        return await self._ended(message)

    async def _close_when_idle(self, idle_timeout_s: float) -> None:
        """Refuse the connection once no audio came for `idle_timeout_s` (the receiving loop then ends)."""
        while (left := self._last_audio_at + idle_timeout_s - time.perf_counter()) > 0:
            await asyncio.sleep(left)
        await self.ws.refuse(f"no audio for {idle_timeout_s:g} s (idle timeout)", CloseCode.POLICY_VIOLATION)

    async def _ended(self, message: WSMessage) -> str:
        """Why the connection ended, given the message `receive` reported its end with."""
        error = message.data if message.type == WSMsgType.ERROR else self.ws.exception()
        if isinstance(error, asyncio.TimeoutError):  # aiohttp's heartbeat had no answer to its ping
            await self.ws.refuse_silent_peer()
        detail = f" ({error})" if error is not None else ""
        if self.ws.refusal is not None:
            return f"closed by the server: {self.ws.refusal}{detail}"
        if error is not None:
            return f"connection lost{detail}"
        return f"client closed the connection (code {self.ws.close_code})"

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
            self.inbox.put(_InputFrame(pending[start: start + size], received_at))
        return pending[whole:]

    async def _step_frames(self) -> None:
        try:
            while (frame := await self.inbox.get()) is not None:
                started = time.perf_counter()
                reply = await self.run_on_model(self.model.step, frame.pcm)
                self.stats.frames_in += 1
                if reply is None:
                    continue
                self.stats.compute_ms.append(1000 * (time.perf_counter() - started))
                self.stats.talk.update(np.array([reply.token]), reply.pcm[None, None])
                self.outbox.put(_OutputFrame(reply, frame.received_at))
        except Exception:
            logger.exception("the model failed during the conversation with %s", self.stats.peer)
            await self.ws.refuse("the model failed; see the server log", CloseCode.INTERNAL_ERROR)
        finally:
            self.outbox.close()

    async def _send_replies(self) -> None:
        encoder = sphn.OpusStreamWriter(self.model.sample_rate)
        try:
            while (frame := await self.outbox.get()) is not None:
                ogg = encoder.append_pcm(frame.reply.pcm)
                if ogg:
                    await self.ws.send_message(audio_message(ogg))
                if frame.reply.text:
                    await self.ws.send_message(text_message(frame.reply.text))
                    self.stats.text_pieces += 1
                self.stats.frames_out += 1
                self.stats.latency_ms.append(1000 * (time.perf_counter() - frame.received_at))
                logger.debug("%s: reply frame sent %.1f ms after its input frame arrived", self.stats.peer,
                             self.stats.latency_ms[-1])
        except ConnectionError as error:
            logger.info("%s: cannot send any more (%s)", self.stats.peer, error)
        except Exception:
            logger.exception("sending to %s failed", self.stats.peer)
            await self.ws.refuse("sending failed; see the server log", CloseCode.INTERNAL_ERROR)

    def _warn_model_too_slow(self) -> None:
        logger.warning("%s: the model is slower than real time, dropping the oldest input frames", self.stats.peer)

    def _warn_client_too_slow(self) -> None:
        logger.warning("%s: the client reads too slowly, dropping reply frames (those that waited over %g s, and the "
                       "oldest beyond %d)", self.stats.peer, self.limits.max_frame_age_s, self.limits.outbox_frames)
