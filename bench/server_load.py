"""`moshi.server` under N concurrent connections: who is served, who waits, who is turned away, how the server's memory
and the per-frame latency behave.

The real command (`python -m moshi.server`, default connection flags unless given after `--`) serves the demo checkpoint
(random weights) on a free port of 127.0.0.1. For each N of `--clients` in turn (all of them `--rounds` times, so that
they share the machine's ups and downs), N clients on 127.0.0.1 each connect, wait for the handshake and stream
`--seconds` of voice-like Ogg Opus in real time (one 80 ms frame every 80 ms) while reading the replies, close, and
connect again, until `--conversations` connections were made or `--duration` seconds passed; the run then ends by itself
(the server is stopped with Ctrl-C). The model holds one conversation at a time: the others wait, up to the
server's 10 s, then are refused with 1013.

    python bench/server_load.py [--clients 1,2,5] [--conversations 6] [--rounds 1] [--seconds 3] [--duration 90]
    python bench/server_load.py --clients 2 -- --idle-timeout 5     # flags after `--` go to the server

Printed: connections served (and, from the server's log, how many waited for another conversation; the time from
connecting to the handshake), refused as busy, failed; per reply frame, the time from sending the input frame that
completes it to receiving its audio (median, p95; reply j is completed by input frame j + 1, so frames the server
dropped would misalign: the missing replies are counted); the server's resident memory (Linux /proc) over the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import sphn
from aiohttp import ClientSession, WSMsgType

from moshi.server.demo_checkpoint import calibration_audio, write_demo_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 24000
FRAME = 1920
FRAME_S = FRAME / SAMPLE_RATE
STARTUP_TIMEOUT_S = 120
HANDSHAKE_TIMEOUT_S = 30  # above the server's 10 s wait for a busy model
REPLY_TAIL_S = 3.0
RSS_EVERY_S = 1.0
WAIT_LINE = re.compile(r"127\.0\.0\.1:(\d+) waits for the model")
END_LINE = re.compile(r"conversation with 127\.0\.0\.1:(\d+): .*?dropped (\d+) input frames .*? and (\d+) reply frames")


@dataclasses.dataclass
class Tally:
    """What the clients of one load (N concurrent clients, all rounds) saw; `handshakes_s`: from connecting to the
    handshake, per served connection; `local_ports`: of every connection (the server's log names them)."""

    connections: int = 0
    local_ports: list[int] = dataclasses.field(default_factory=list)
    handshakes_s: list[float] = dataclasses.field(default_factory=list)
    refused: int = 0
    failed: list[str] = dataclasses.field(default_factory=list)
    latencies_ms: list[float] = dataclasses.field(default_factory=list)
    missing_replies: int = 0


def opus_pages(seconds: float) -> list[bytes]:
    audio = calibration_audio(seconds + FRAME_S, SAMPLE_RATE, seed=3)
    writer = sphn.OpusStreamWriter(SAMPLE_RATE)
    return [writer.append_pcm(audio[start: start + FRAME]) for start in range(0, int(seconds / FRAME_S) * FRAME, FRAME)]


async def one_connection(session: ClientSession, url: str, pages: list[bytes], tally: Tally) -> None:
    """Connect, wait for the model, converse in real time, close; the outcome goes into `tally`."""
    connected_at = time.perf_counter()
    async with session.ws_connect(url) as ws:
        tally.local_ports.append(ws.get_extra_info("sockname")[1])
        first = await ws.receive(timeout=HANDSHAKE_TIMEOUT_S)
        if first.type == WSMsgType.BINARY and first.data[:1] == b"\x05":
            closing = await ws.receive(timeout=10)
            if closing.type == WSMsgType.CLOSE and closing.data == 1013:
                tally.refused += 1
            else:
                tally.failed.append(f"refused with {closing.data}: {first.data[1:].decode()}")
            return
        if first.type != WSMsgType.BINARY or first.data != b"\x00":
            tally.failed.append(f"no handshake: {first.type.name} {first.data!r}")
            return
        tally.handshakes_s.append(time.perf_counter() - connected_at)
        await stream(ws, pages, tally)


async def stream(ws, pages: list[bytes], tally: Tally) -> None:
    sent_at: list[float] = []
    replies_at: list[float] = []
    reader = asyncio.create_task(read_replies(ws, replies_at, len(pages) - 1))
    started = time.perf_counter()
    for index, page in enumerate(pages):
        await asyncio.sleep(max(0.0, started + index * FRAME_S - time.perf_counter()))
        await ws.send_bytes(b"\x01" + page)
        sent_at.append(time.perf_counter())
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(reader, REPLY_TAIL_S)
    reader.cancel()
    tally.latencies_ms += [1000 * (replies_at[j] - sent_at[j + 1]) for j in range(len(replies_at))]
    tally.missing_replies += len(pages) - 1 - len(replies_at)


async def read_replies(ws, replies_at: list[float], expected: int) -> None:
    while len(replies_at) < expected:
        message = await ws.receive()
        if message.type != WSMsgType.BINARY:
            return
        if message.data[:1] == b"\x01":
            replies_at.append(time.perf_counter())


async def client_loop(url: str, pages: list[bytes], tally: Tally, remaining: list[int], deadline: float) -> None:
    """Connect again and again while `remaining[0]` connections are left to make and before `deadline`."""
    async with ClientSession() as session:
        while remaining[0] > 0 and time.perf_counter() < deadline:
            remaining[0] -= 1
            tally.connections += 1
            try:
                await one_connection(session, url, pages, tally)
            except (OSError, asyncio.TimeoutError) as error:
                tally.failed.append(f"{type(error).__name__}: {error}")


async def sample_rss(pid: int, samples: list[tuple[float, float]], stop: asyncio.Event) -> None:
    status = Path(f"/proc/{pid}/status")
    started = time.perf_counter()
    while not stop.is_set():
        if status.exists():
            kib = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmRSS:"))
            samples.append((time.perf_counter() - started, kib / 1024))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), RSS_EVERY_S)


async def load(url: str, pid: int, args: argparse.Namespace) -> tuple[dict[int, Tally], list[tuple[float, float]]]:
    """Each number of concurrent clients in turn, `--rounds` times (so that the loads share the machine's ups and
    downs); the server's RSS sampled all along."""
    pages = opus_pages(args.seconds)
    tallies, rss = {clients: Tally() for clients in args.clients}, []
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(pid, rss, stop))
    for _ in range(args.rounds):
        for clients, tally in tallies.items():
            deadline, remaining = time.perf_counter() + args.duration, [args.conversations]
            loops = [client_loop(url, pages, tally, remaining, deadline) for _ in range(clients)]
            await asyncio.wait_for(asyncio.gather(*loops), args.duration + HANDSHAKE_TIMEOUT_S + args.seconds + 30)
    stop.set()
    await sampler
    return tallies, rss


def clients_list(text: str) -> list[int]:
    numbers = [int(item) for item in text.split(",")]
    if not numbers or min(numbers) < 1 or len(set(numbers)) != len(numbers):
        raise argparse.ArgumentTypeError(f"{text}: expected distinct positive numbers, e.g. 1,2,5")
    return numbers


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_listening(process: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"error: the server exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"error: the server did not listen within {STARTUP_TIMEOUT_S} s")


def server_view(log: str, ports: list[int]) -> tuple[int, int, int]:
    """From the server's log, for the connections from `ports`: how many waited for the model, and the input and
    reply frames the server dropped."""
    ours = set(ports)
    waited = sum(int(match.group(1)) in ours for match in WAIT_LINE.finditer(log))
    drops = [(int(match.group(2)), int(match.group(3))) for match in END_LINE.finditer(log)
             if int(match.group(1)) in ours]
    return waited, sum(inputs for inputs, _ in drops), sum(replies for _, replies in drops)


def report(clients: int, args: argparse.Namespace, tally: Tally, log: str, baseline_ms: float | None
           ) -> dict[str, object]:
    latency, handshakes = np.array(tally.latencies_ms), np.array(tally.handshakes_s)
    waited, dropped_in, dropped_out = server_view(log, tally.local_ports)
    figures: dict[str, object] = {
        "clients": clients, "connections": tally.connections, "served": len(handshakes), "waited": waited,
        "refused_busy": tally.refused, "failed": len(tally.failed),
        "handshake_median_s": float(np.median(handshakes)) if len(handshakes) else None,
        "handshake_max_s": float(handshakes.max()) if len(handshakes) else None,
        "reply_frames": len(latency), "missing_reply_frames": tally.missing_replies,
        "server_dropped_input_frames": dropped_in, "server_dropped_reply_frames": dropped_out,
        "latency_median_ms": float(np.median(latency)) if len(latency) else None,
        "latency_p95_ms": float(np.percentile(latency, 95)) if len(latency) else None,
    }
    print(f"{clients} concurrent client(s), {tally.connections} connections of {args.seconds:g} s of audio:")
    print(f"  served {figures['served']}, refused as busy {tally.refused}, failed {len(tally.failed)}; "
          f"{waited} of the {tally.connections} waited for another conversation (server log)")
    for failure in tally.failed[:5]:
        print(f"    {failure}")
    if len(handshakes):
        print(f"  connect -> handshake: median {figures['handshake_median_s']:.2f} s, max "
              f"{figures['handshake_max_s']:.2f} s")
    if len(latency):
        ratio = f" ({figures['latency_median_ms'] / baseline_ms:.2f} x the first load's)" if baseline_ms else ""
        print(f"  per reply frame, input sent -> reply received: median {figures['latency_median_ms']:.1f} ms"
              f"{ratio}, p95 {figures['latency_p95_ms']:.1f} ms over {len(latency)} frames")
    print(f"  frames dropped by the server: {dropped_in} input (model slower than real time), {dropped_out} reply; "
          f"replies missing at the client: {tally.missing_replies}")
    return figures


def report_rss(rss: list[tuple[float, float]]) -> dict[str, object]:
    if not rss:
        print("server RSS: not measured (needs Linux /proc)")
        return {}
    shown = rss[:: max(1, len(rss) // 10)] + rss[-1:]
    print(f"server RSS MB over time: {', '.join(f'{t:.0f} s: {mb:.0f}' for t, mb in shown)} (min "
          f"{min(mb for _, mb in rss):.0f}, max {max(mb for _, mb in rss):.0f})")
    return {"rss_mb": [(round(t, 1), round(mb, 1)) for t, mb in rss]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=clients_list, default=[1, 2, 5],
                        help="numbers of concurrent connections, e.g. 1,2,5 (default: 1,2,5), loaded in turn")
    parser.add_argument("--conversations", type=int, default=6,
                        help="connections made per load and round, at most (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=1, help="times each load is run, in turn (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=3.0, help="audio streamed per conversation (default: "
                                                                   "%(default)s)")
    parser.add_argument("--duration", type=float, default=90.0,
                        help="no new connection after this many seconds (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="the server's torch CPU threads (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("server_flags", nargs="*", help="after `--`: more flags for `python -m moshi.server`")
    args = parser.parse_args()
    if not (max(args.clients) <= 64 and 1 <= args.conversations <= 1000 and 1 <= args.rounds <= 20
            and 0 < args.seconds <= 60 and 0 < args.duration <= 3600):
        parser.error("expected 1..64 clients, 1..1000 conversations, 1..20 rounds, 0..60 s of audio and 0..3600 s of "
                     "duration")
    with tempfile.TemporaryDirectory(prefix="moshi_server_load_") as folder:
        write_demo_checkpoint(folder)
        port = free_port()
        env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
                            "OMP_NUM_THREADS": str(args.threads)}
        command = [sys.executable, "-m", "moshi.server", "--hf-repo", folder, "--device", "cpu", "--static", "none",
                   "--host", "127.0.0.1", "--port", str(port), *args.server_flags]
        log_path = Path(folder) / "server.log"
        with open(log_path, "w") as log_file:
            process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
            try:
                wait_until_listening(process, port)
                tallies, rss = asyncio.run(load(f"http://127.0.0.1:{port}/api/chat", process.pid, args))
            finally:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
        log = log_path.read_text()
    print(f"moshi.server, demo checkpoint on CPU ({args.threads} torch thread(s)), clients on 127.0.0.1 streaming in "
          f"real time; load average {' '.join(f'{load:.1f}' for load in os.getloadavg())}")
    loads: list[dict[str, object]] = []
    for clients, tally in tallies.items():
        loads.append(report(clients, args, tally, log, loads[0]["latency_median_ms"] if loads else None))
    warnings = sum(" WARNING " in line for line in log.splitlines())
    figures = {"loads": loads, **report_rss(rss), "server_warnings": warnings}
    print(f"server log: {figures['server_warnings']} warnings")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
