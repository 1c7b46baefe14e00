"""`Conversation` with a stand-in websocket: a client that never reads and a model slower than the client's audio
both cost dropped frames (counted and logged), never unbounded memory; the closing log carries the talk report."""

from __future__ import annotations

import asyncio
import functools
import logging
from pathlib import Path

import numpy as np
import pytest
import sphn
from chat_helpers import FRAME, SAMPLE_RATE, FakeSocket, load_demo_model, opus_pages, wav_frames

from moshi.server.conversation import Conversation, ConversationLimits, ConversationStats
from moshi.server.served_model import ServedModel
from moshi.utils.talk_report import DEFAULT_SILENCE_DBFS, TalkMeter, bins_line, summary_line

FRAMES = 20


@pytest.fixture(scope="module")
def model(demo_checkpoint: Path) -> ServedModel:
    return load_demo_model(demo_checkpoint)


@pytest.fixture(scope="module")
def messages(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    frames = wav_frames(tmp_path_factory.mktemp("wav"), FRAMES * FRAME / 24000, seed=3)
    return [b"\x01" + page for page in opus_pages(frames)]


async def run_on_model_inline(function, *args):
    """The model step inside the event loop: other tasks only run between frames, which makes the timing exact."""
    return function(*args)


def converse(model: ServedModel, socket_factory, **queues: int) -> ConversationStats:
    """One conversation on the socket `socket_factory(holder)` makes; `holder` then holds the conversation."""
    async def scenario() -> ConversationStats:
        model.start_conversation()
        holder: list[Conversation] = []
        conversation = Conversation(socket_factory(holder), model, run_on_model_inline, ConversationLimits(**queues))
        holder.append(conversation)
        return await asyncio.wait_for(conversation.run(), timeout=20)

    return asyncio.run(scenario())


def frames_processed(holder: list[Conversation], count: int) -> bool:
    return bool(holder) and holder[0].stats.frames_in >= count


def test_a_client_that_never_reads_costs_dropped_reply_frames(model: ServedModel, messages: list[bytes],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    outbox = 3
    sockets: list[FakeSocket] = []
    holders: list[list[Conversation]] = []

    def stuck_client(holder: list[Conversation]) -> FakeSocket:
        sockets.append(FakeSocket(messages, functools.partial(frames_processed, holder, FRAMES), stuck=True))
        holders.append(holder)
        return sockets[0]

    with caplog.at_level(logging.INFO, logger="moshi.server"):
        stats = converse(model, stuck_client, inbox_frames=FRAMES, outbox_frames=outbox)
    # The sender takes one of the FRAMES - 1 reply frames and stays stuck sending it; the queue keeps the last
    # `outbox` of the others (or `outbox - 1`, when the sender took its frame from a full queue); the rest are dropped.
    waiting = len(holders[0][0].outbox)
    assert (stats.frames_in, stats.dropped_in, stats.expired_out) == (FRAMES, 0, 0)
    assert outbox - 1 <= waiting <= outbox and stats.dropped_out == FRAMES - 1 - 1 - waiting
    assert sockets[0].sent == [] and stats.frames_out == 0
    logged = caplog.text
    assert "the client reads too slowly" in logged and f"{stats.dropped_out} over the queue of {outbox}" in logged


def test_a_model_slower_than_the_audio_costs_dropped_input_frames(model: ServedModel, messages: list[bytes],
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    inbox = 4

    def flooding_client(holder: list[Conversation]) -> FakeSocket:
        # All messages arrive before the model's task runs once, as if the model were far slower than real time.
        return FakeSocket(messages, functools.partial(frames_processed, holder, inbox))

    with caplog.at_level(logging.INFO, logger="moshi.server"):
        stats = converse(model, flooding_client, inbox_frames=inbox, outbox_frames=FRAMES)
    assert (stats.frames_in, stats.dropped_in) == (inbox, FRAMES - inbox)
    assert stats.frames_out == inbox - 1 and stats.dropped_out == 0
    logged = caplog.text
    assert "the model is slower than real time" in logged and f"dropped {FRAMES - inbox} input frames" in logged


def test_the_closing_log_carries_the_talk_report(model: ServedModel, messages: list[bytes],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    def reading_client(holder: list[Conversation]) -> FakeSocket:
        return FakeSocket(messages, functools.partial(frames_processed, holder, FRAMES))

    with caplog.at_level(logging.DEBUG, logger="moshi.server"):
        stats = converse(model, reading_client, inbox_frames=FRAMES, outbox_frames=FRAMES)
    # The same conversation again, straight through the model: the client's audio as the server decoded it.
    reader = sphn.OpusStreamReader(SAMPLE_RATE)
    audio = np.concatenate([reader.append_bytes(message[1:]) for message in messages])
    model.start_conversation()
    replies = [model.step(audio[start: start + FRAME]) for start in range(0, FRAMES * FRAME, FRAME)]
    replies = [reply for reply in replies if reply is not None]
    assert stats.frames_out == len(replies) == FRAMES - 1
    expected = TalkMeter(1, model.frame_seconds, model.silent_text_tokens)
    for reply in replies:
        expected.update(np.array([reply.token]), reply.pcm[None, None])
    (figures,) = stats.talk.figures()
    assert figures == expected.figures()[0]
    # ... and the overall figures from their definitions (one bin: the conversation is shorter than 10 s).
    pad = np.array([reply.token in model.silent_text_tokens for reply in replies])
    loudness = np.array([10 * np.log10(np.mean(np.square(reply.pcm, dtype=np.float64))) for reply in replies])
    words = [reply.token for reply in replies if reply.token not in model.silent_text_tokens]
    four_grams = [tuple(words[start: start + 4]) for start in range(len(words) - 3)]
    seconds = len(replies) * FRAME / SAMPLE_RATE
    assert len(four_grams) > 0  # the random model says words (whether it pads here depends on its sampling)
    assert figures.overall == pytest.approx({
        "seconds": seconds, "text_tokens_per_minute": len(words) * 60 / seconds, "pad_fraction": pad.mean(),
        "silence_fraction": (loudness < DEFAULT_SILENCE_DBFS).mean(),
        "repeated_ngram_fraction": 1 - len(set(four_grams)) / len(four_grams)})
    logged = {(record.levelno, record.getMessage()) for record in caplog.records}
    assert (logging.INFO, f"conversation with test-peer, talk: {summary_line(figures, 4, 10.0)}") in logged
    assert (logging.DEBUG, f"conversation with test-peer, talk {bins_line(figures, 10.0)}") in logged
