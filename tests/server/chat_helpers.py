"""Helpers of the server tests: the demo model, test audio as Opus, a lock-step websocket client, a fake websocket."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile
import sphn
import torch
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from moshi.models import LMGen, loaders
from moshi.server.app import ServerSettings, build_app
from moshi.server.demo_checkpoint import calibration_audio
from moshi.server.served_model import ServedModel

SAMPLE_RATE = 24000
FRAME = 1920
RECEIVE_TIMEOUT_S = 10.0
REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 90


class TokenRecorder:
    """LMGen hooks that keep every step's sampled tokens: text `[B]` and own audio `[B, dep_q]`."""

    def __init__(self) -> None:
        self.text: list[torch.Tensor] = []
        self.audio: list[torch.Tensor] = []

    def on_text(self, tokens: torch.Tensor) -> None:
        self.text.append(tokens.clone())

    def on_audio(self, tokens: torch.Tensor) -> None:
        self.audio.append(tokens.clone())

    def take(self) -> torch.Tensor:
        """The steps recorded since the last `take`, `[steps, 1 + dep_q]`."""
        steps = torch.cat([torch.stack(self.text)[:, :, None], torch.stack(self.audio)], dim=2)[:, 0]
        self.text, self.audio = [], []
        return steps


def load_demo_model(folder: Path, seed: int | None = 1234, recorder: TokenRecorder | None = None) -> ServedModel:
    info = loaders.CheckpointInfo.from_hf_repo(folder)
    lm = info.get_moshi(device="cpu", dtype=torch.float32)
    hooks = {} if recorder is None else {"on_text_hook": recorder.on_text, "on_audio_hook": recorder.on_audio}
    lm_gen = LMGen(lm, **info.lm_gen_config, **hooks)
    return ServedModel(info.get_mimi(), lm_gen, info.get_text_tokenizer(), seed=seed)


def wav_frames(folder: Path, seconds: float, seed: int) -> list[np.ndarray]:
    """Voice-like audio written to a wav file and read back, cut into 80 ms frames `[1920]` float32."""
    path = folder / f"speech_{seed}.wav"
    soundfile.write(path, calibration_audio(seconds, SAMPLE_RATE, seed), SAMPLE_RATE, subtype="PCM_16")
    audio, rate = soundfile.read(path, dtype="float32")
    assert rate == SAMPLE_RATE
    return [audio[start: start + FRAME] for start in range(0, len(audio) - FRAME + 1, FRAME)]


def opus_pages(frames: list[np.ndarray]) -> list[bytes]:
    """One Ogg Opus page (as a client would send it) per frame; the first also carries the stream headers."""
    writer = sphn.OpusStreamWriter(SAMPLE_RATE)
    return [writer.append_pcm(frame) for frame in frames]


class ChatTestServer(TestServer):
    """aiohttp's test server, except that a handler goes on when its client's connection is lost, as under
    `web.run_app` (the test server cancels it)."""

    async def _make_runner(self, **kwargs: object) -> web.AppRunner:
        return await super()._make_runner(**(kwargs | {"handler_cancellation": False}))


@contextlib.asynccontextmanager
async def chat_server(model: ServedModel, **settings: object) -> AsyncIterator[tuple[TestClient, web.Application]]:
    """The application on a loopback port, without the web page unless `static_dir` is given."""
    app = build_app(model, ServerSettings(**({"static_dir": None} | settings)))
    async with TestClient(ChatTestServer(app, host="127.0.0.1")) as client:
        yield client, app


@dataclasses.dataclass
class Reply:
    """What the server sent in one conversation, in order: (kind byte, payload) per message."""

    messages: list[tuple[int, bytes]] = dataclasses.field(default_factory=list)

    @property
    def audio(self) -> list[bytes]:
        return [payload for kind, payload in self.messages if kind == 1]

    @property
    def text(self) -> list[str]:
        return [payload.decode("utf-8") for kind, payload in self.messages if kind == 2]

    def decoded_audio(self) -> np.ndarray:
        reader = sphn.OpusStreamReader(SAMPLE_RATE)
        return np.concatenate([reader.append_bytes(page) for page in self.audio])


async def expect_handshake(ws) -> None:
    message = await ws.receive(timeout=RECEIVE_TIMEOUT_S)
    assert message.type == WSMsgType.BINARY and message.data == b"\x00", message


async def read_until_audio(ws, reply: Reply, count: int) -> None:
    """Read messages until `count` audio messages have arrived in total."""
    while len(reply.audio) < count:
        message = await ws.receive(timeout=RECEIVE_TIMEOUT_S)
        assert message.type == WSMsgType.BINARY, message
        reply.messages.append((message.data[0], message.data[1:]))


async def read_quiet_tail(ws, reply: Reply, quiet_s: float = 0.3) -> None:
    """Read whatever else arrives until nothing comes for `quiet_s` (the text piece that follows the last audio)."""
    while True:
        try:
            message = await ws.receive(timeout=quiet_s)
        except asyncio.TimeoutError:
            return
        assert message.type == WSMsgType.BINARY, message
        reply.messages.append((message.data[0], message.data[1:]))


async def converse(client: TestClient, pages: list[bytes]) -> Reply:
    """A whole conversation in lock step: send a frame, wait for the reply frame it completes (the model answers from
    its second step on), so that no frame ever waits in a queue and the reply is reproducible."""
    reply = Reply()
    async with client.ws_connect("/api/chat") as ws:
        await expect_handshake(ws)
        for index, page in enumerate(pages):
            await ws.send_bytes(b"\x01" + page)
            await read_until_audio(ws, reply, index)
        await read_quiet_tail(ws, reply)
    return reply


async def finished_conversations(app: web.Application, count: int, timeout_s: float = 5.0) -> list:
    """The stats of the first `count` finished conversations, waiting for their handlers to wrap up."""
    from moshi.server.app import FINISHED_CONVERSATIONS

    deadline = asyncio.get_running_loop().time() + timeout_s
    while len(app[FINISHED_CONVERSATIONS]) < count:
        assert asyncio.get_running_loop().time() < deadline, f"{count} conversations did not finish in {timeout_s} s"
        await asyncio.sleep(0.01)
    return list(app[FINISHED_CONVERSATIONS])


class FakeSocket:
    """Stands in for `moshi.server.websocket.ChatSocket` in `Conversation`: `receive` returns the given client
    messages, then waits for `until()` before reporting a normal close; `send_message` blocks forever when `stuck` (a
    client that never reads); `refuse` records the reason and code."""

    peer = "test-peer"

    def __init__(self, messages: list[bytes], until: Callable[[], bool], stuck: bool = False) -> None:
        self.messages, self.until, self.stuck = list(messages), until, stuck
        self.sent: list[bytes] = []
        self.closed = False
        self.close_code: int | None = None
        self.refusal: str | None = None

    async def receive(self) -> _Message:
        if self.messages:
            return _Message(WSMsgType.BINARY, self.messages.pop(0))
        while not (self.until() or self.closed):
            await asyncio.sleep(0.01)
        if not self.closed:
            self.closed, self.close_code = True, 1000
        return _Message(WSMsgType.CLOSE, self.close_code)

    async def send_message(self, data: bytes) -> None:
        if self.stuck:
            await asyncio.Event().wait()
        self.sent.append(data)

    async def refuse(self, reason: str, code: int) -> None:
        self.refusal, self.closed, self.close_code = reason, True, code

    def exception(self) -> None:
        return None


@dataclasses.dataclass
class _Message:
    type: WSMsgType
    data: object


@dataclasses.dataclass
class ServerProcess:
    url: str
    log: str = ""


@contextlib.contextmanager
def server_process(flags: list[str]) -> Iterator[ServerProcess]:
    """`python -m moshi.server FLAGS` on a free loopback port (this checkout's package, one CPU thread), once it
    listens; stopped with Ctrl-C on exit, its log (stderr) then in `.log`."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
                        "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "moshi.server", *flags, "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    running = ServerProcess(f"http://127.0.0.1:{port}")
    try:
        wait_until_listening(process, port)
        yield running
    finally:
        process.send_signal(signal.SIGINT)
        _, running.log = process.communicate(timeout=30)


def wait_until_listening(process: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}: {process.stderr.read()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"the server did not listen within {STARTUP_TIMEOUT_S} s")
