"""`python -m moshi.server`: starts from local files and serves the page and /api/chat; mistakes in flags or files are
one `error:` line with exit status 2."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
import torch
from chat_helpers import (
    FRAME,
    chat_server,
    expect_handshake,
    load_demo_model,
    opus_pages,
    server_process,
    wav_frames,
)

from moshi.server import main
from moshi.server.app import ServerSettings, bundled_page_dir
from moshi.server.cli import build_parser, connection_settings
from moshi.server.conversation import ConversationLimits


def local_files(folder: Path) -> dict[str, str]:
    """The checkpoint as separate local files, the way the acceptance command names them."""
    return {"--moshi-weight": str(folder / "model.safetensors"), "--mimi-weight": str(folder / "mimi.safetensors"),
            "--tokenizer": str(folder / "tokenizer.model"), "--config-path": str(folder / "config.json"),
            "--mimi-config": str(folder / "mimi_config.json")}


def as_argv(flags: dict[str, str]) -> list[str]:
    return [item for flag, value in flags.items() for item in (flag, value)]


async def page_and_chat(base_url: str, pages: list[bytes]) -> tuple[str, str, list[int]]:
    async with aiohttp.ClientSession(base_url) as session:
        async with session.get("/") as response:
            page = await response.text()
        async with session.get("/app.js") as response:
            script = await response.text()
        kinds = []
        async with session.ws_connect("/api/chat") as ws:
            await expect_handshake(ws)
            for page_bytes in pages:
                await ws.send_bytes(b"\x01" + page_bytes)
            while kinds.count(1) < len(pages) - 1:
                kinds.append((await ws.receive(timeout=20)).data[0])
        return page, script, kinds


def test_the_command_serves_local_files(demo_checkpoint: Path, tmp_path: Path) -> None:
    pages = opus_pages(wav_frames(tmp_path, 6 * FRAME / 24000, seed=5))
    with server_process(as_argv(local_files(demo_checkpoint)) + ["--device", "cpu"]) as server:
        page, script, kinds = asyncio.run(page_and_chat(server.url, pages))
    assert "<title>Moshi</title>" in page and "/api/chat" in script
    assert kinds.count(1) == len(pages) - 1
    assert "conversation with 127.0.0.1" in server.log and "6 frames in, 5 out" in server.log


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(argv)
    return code, capsys.readouterr().err.splitlines()


def wrong_config(folder: Path, tmp_path: Path) -> str:
    config = json.loads((folder / "config.json").read_text()) | {"n_q": 3}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return str(tmp_path / "config.json")


def not_json(tmp_path: Path) -> str:
    (tmp_path / "config.json").write_text("{not json")
    return str(tmp_path / "config.json")


MISTAKES = {  # name: (flags to change, given the demo folder and tmp_path; a part of the expected message)
    "missing LM weights": (lambda folder, tmp: {"--moshi-weight": str(tmp / "absent.safetensors")},
                           "absent.safetensors"),
    "missing Mimi weights": (lambda folder, tmp: {"--mimi-weight": str(tmp / "gone.safetensors")}, "gone.safetensors"),
    "config that is not JSON": (lambda folder, tmp: {"--config-path": not_json(tmp)}, "is not valid JSON"),
    "config that builds no model": (lambda folder, tmp: {"--config-path": wrong_config(folder, tmp)},
                                    "expected 4 delays"),
    "guidance": (lambda folder, tmp: {"--cfg-coef": "3"}, "--cfg-coef 3.0"),
    "page folder without a page": (lambda folder, tmp: {"--static": str(tmp)}, "no index.html"),
    "ssl folder without certificates": (lambda folder, tmp: {"--ssl": str(tmp)}, "cannot load cert.pem"),
    "negative idle timeout": (lambda folder, tmp: {"--idle-timeout": "-1"},
                              "--idle-timeout -1: expected a number of seconds, 0 (off) or more"),
    "no time for reply frames": (lambda folder, tmp: {"--max-frame-age": "0"},
                                 "--max-frame-age 0: expected a number of seconds, more than 0"),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_mistakes_are_one_error_line(demo_checkpoint: Path, tmp_path: Path, mistake: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    change, expected = MISTAKES[mistake]
    flags = local_files(demo_checkpoint) | {"--device": "cpu"} | change(demo_checkpoint, tmp_path)
    code, lines = run_main(as_argv(flags), capsys)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given on a machine without a GPU")
def test_asking_for_a_missing_gpu_is_one_error_line(demo_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = run_main(as_argv(local_files(demo_checkpoint) | {"--device": "cuda"}), capsys)
    assert code == 2 and lines == ["error: --device cuda: no CUDA GPU is visible here (use --device cpu)"]


def test_static_flag_chooses_the_page(demo_checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<p>another client</p>")
    model = load_demo_model(demo_checkpoint)

    async def fetch(static_dir: Path | None) -> tuple[int, str]:
        async with chat_server(model, static_dir=static_dir) as (client, _), client.get("/") as response:
            return response.status, await response.text()

    ours, theirs, none = (asyncio.run(fetch(folder)) for folder in (bundled_page_dir(), tmp_path, None))
    assert ours[0] == 200 and "<title>Moshi</title>" in ours[1]
    assert theirs == (200, "<p>another client</p>")
    assert none[0] == 404


def test_connection_flags_reach_the_settings() -> None:
    def settings(*argv: str) -> dict[str, object]:
        return connection_settings(build_parser().parse_args(list(argv)))

    defaults = settings()
    assert defaults == {"heartbeat_s": ServerSettings.heartbeat_s, "conversation": ConversationLimits()}
    chosen = settings("--idle-timeout", "0.5", "--heartbeat", "0", "--max-frame-age", "0.25")
    assert chosen == {"heartbeat_s": None, "conversation": ConversationLimits(idle_timeout_s=0.5, max_frame_age_s=0.25)}
    assert settings("--idle-timeout", "0")["conversation"] == ConversationLimits(idle_timeout_s=None)
