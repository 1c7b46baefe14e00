"""Per-frame latency of `moshi.server`: from the arrival of the message that completes an 80 ms input frame to the
moment its reply frame (Ogg Opus audio, then the text piece) has been handed to the socket.

The real application runs on a loopback port; a client streams voice-like audio as Ogg Opus pages in real time (one
80 ms frame every 80 ms) and reads the replies. Figures come from the server's own per-frame records: latency
(received -> sent, queueing included) and model step (Mimi encode, LM step, Mimi decode, as awaited from the model
thread). Real-time factor = model step / 80 ms (below 1 keeps up with the user). The same steps called back to back
without the server, measured in the same run just before, give the floor that the latency is compared with.

    python bench/server.py [--frames 150] [--device cpu] [--threads N] [--json out.json]
    python bench/server.py --7b --device cuda [--ttt-layers 29,30,31]   # 7B config, random bf16 weights

The default model is the demo checkpoint of `moshi.server.demo_checkpoint` (random weights, float32). `--7b` builds the
released 7B LM and Mimi configurations with random weights (no download) and a stand-in tokenizer of numbered pieces;
on a GPU it warms up (CUDA graphs) before the conversation, as the server does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import sphn
import torch
from aiohttp import ClientSession, web

from moshi.models import LMGen, loaders
from moshi.server.app import FINISHED_CONVERSATIONS, ServerSettings, build_app
from moshi.server.conversation import ConversationStats
from moshi.server.demo_checkpoint import calibration_audio, write_demo_checkpoint
from moshi.server.served_model import ServedModel

FRAME_MS = 80.0


class NumberedPieces:
    """A tokenizer stand-in for random-weight models: token i reads `<i>`."""

    def __init__(self, size: int) -> None:
        self.size = size

    def vocab_size(self) -> int:
        return self.size

    def id_to_piece(self, token: int) -> str:
        return f"<{token}>"


def demo_model(device: torch.device, dtype: torch.dtype) -> ServedModel:
    with tempfile.TemporaryDirectory(prefix="moshi_server_bench_") as folder:
        write_demo_checkpoint(folder)
        info = loaders.CheckpointInfo.from_hf_repo(folder)
        lm = info.get_moshi(device=device, dtype=dtype)
        return ServedModel(info.get_mimi(device=device), LMGen(lm), info.get_text_tokenizer())


def seven_b_model(device: torch.device, dtype: torch.dtype, ttt_layers: str | None) -> ServedModel:
    lm_config = loaders.default_lm_config()
    if ttt_layers:
        lm_config["ttt"] = {"layers": ttt_layers, "variant": "linear", "mini_batch_size": 16}
    lm = loaders.get_moshi_lm(None, lm_config, device=device, dtype=dtype)
    mimi = loaders.get_mimi(None, device=device)
    return ServedModel(mimi, LMGen(lm), NumberedPieces(lm.text_card))


async def stream_in_real_time(model: ServedModel, frames: int) -> ConversationStats:
    """One conversation through the real application on a loopback port; returns the server's stats of it."""
    app = build_app(model, ServerSettings(static_dir=None))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    audio = calibration_audio(frames * FRAME_MS / 1000 + 1, model.sample_rate, seed=7)
    writer = sphn.OpusStreamWriter(model.sample_rate)
    try:
        async with ClientSession() as session, session.ws_connect(f"http://127.0.0.1:{port}/api/chat") as ws:
            assert (await ws.receive(timeout=60)).data == b"\x00", "no handshake"
            reader = asyncio.create_task(read_replies(ws, frames - 1))
            started = time.perf_counter()
            for index in range(frames):
                await asyncio.sleep(max(0.0, started + index * FRAME_MS / 1000 - time.perf_counter()))
                frame = audio[index * model.frame_size: (index + 1) * model.frame_size]
                await ws.send_bytes(b"\x01" + writer.append_pcm(frame))
            await reader
        while not app[FINISHED_CONVERSATIONS]:
            await asyncio.sleep(0.01)
        return app[FINISHED_CONVERSATIONS][0]
    finally:
        await runner.cleanup()


async def read_replies(ws, expected: int, quiet_s: float = 5.0) -> None:
    """Read until `expected` audio messages came, or none for `quiet_s` (frames dropped by a model too slow)."""
    received = 0
    while received < expected:
        try:
            message = await ws.receive(timeout=quiet_s)
        except asyncio.TimeoutError:
            return
        received += message.data[:1] == b"\x01"


def bare_steps_ms(model: ServedModel, frames: int) -> np.ndarray:
    """`ServedModel.step` called back to back on this thread, no server around it: the floor of the model step."""
    audio = calibration_audio(frames * FRAME_MS / 1000 + 1, model.sample_rate, seed=8)
    model.start_conversation()
    times = []
    for index in range(frames):
        started = time.perf_counter()
        model.step(audio[index * model.frame_size: (index + 1) * model.frame_size])
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        times.append(1000 * (time.perf_counter() - started))
    return np.array(times[1:])


def summary(stats: ConversationStats, bare_ms: np.ndarray) -> dict[str, float]:
    latency, compute = np.array(stats.latency_ms), np.array(stats.compute_ms)
    return {
        "bare_step_median_ms": float(np.median(bare_ms)),
        "reply_frames": len(latency),
        "latency_median_ms": float(np.median(latency)),
        "latency_p90_ms": float(np.percentile(latency, 90)),
        "latency_max_ms": float(latency.max()),
        "step_median_ms": float(np.median(compute)),
        "step_p90_ms": float(np.percentile(compute, 90)),
        "real_time_factor": float(np.median(compute) / FRAME_MS),
        "dropped_input_frames": stats.dropped_in,
        "dropped_output_frames": stats.dropped_out + stats.expired_out,
        "latency_over_bare_step": float(np.median(latency) / np.median(bare_ms)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--7b", dest="seven_b", action="store_true", help="7B config, random bf16 weights (GPU)")
    parser.add_argument("--ttt-layers", help="with --7b: TTT-Linear layers at these indices, e.g. 29,30,31")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=150, help="80 ms frames to stream (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.seven_b:
        ttt = f" + TTT layers {args.ttt_layers}" if args.ttt_layers else ""
        label, dtype = f"7B config{ttt}, random weights", torch.bfloat16
        model = seven_b_model(device, dtype, args.ttt_layers)
    else:
        label, dtype = "demo model (random weights)", torch.float32
        model = demo_model(device, dtype)
    if device.type == "cuda":
        model.warmup()
    bare_ms = bare_steps_ms(model, min(args.frames, 60))
    figures = summary(asyncio.run(stream_in_real_time(model, args.frames)), bare_ms)
    print(f"moshi.server on {device} ({label}, {dtype}, {torch.get_num_threads()} CPU threads), "
          f"{figures['reply_frames']} reply frames streamed in real time:")
    print(f"  received -> sent  median {figures['latency_median_ms']:7.1f} ms   p90 {figures['latency_p90_ms']:7.1f} ms"
          f"   max {figures['latency_max_ms']:7.1f} ms")
    print(f"  model step        median {figures['step_median_ms']:7.1f} ms   p90 {figures['step_p90_ms']:7.1f} ms")
    print(f"  bare model step   median {figures['bare_step_median_ms']:7.1f} ms (no server, same thread); latency / "
          f"bare step {figures['latency_over_bare_step']:.2f}")
    print(f"  real-time factor  {figures['real_time_factor']:.3f} (model step / {FRAME_MS:.0f} ms frame; below 1 "
          f"keeps up)")
    print(f"  dropped frames    {figures['dropped_input_frames']} in, {figures['dropped_output_frames']} out")
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "model": label, **figures}, indent=1))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
