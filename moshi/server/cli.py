"""`python -m moshi.server` / `moshi-server-py`: load a checkpoint and serve it on upstream's websocket protocol.

Flags follow upstream's server (`--host`, `--port`, `--static`, `--ssl`, the checkpoint flags, `--device`, `--half`,
`--cfg-coef`, `--no_fuse_lora`), plus `--seed`, the sampling flags (`--temp`, `--temp-text`, `--top-k`,
`--top-k-text`), the connection flags (`--idle-timeout`, `--heartbeat`, `--max-frame-age`) and the model flags every
command shares (`moshi.models.model_flags`: `--checkpoint`, `--ttt-config`, `--context`, ...; docs/naming_a_model.md).
Mistakes in flags or files are reported as one `error:` line with exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import ssl
from pathlib import Path

import torch
from aiohttp import web
from huggingface_hub.utils import logging as hf_logging

from ..models import LMGen, model_flags
from ..models.loaders import DEFAULT_REPO
from .app import ServerSettings, build_app, bundled_page_dir
from .conversation import ConversationLimits
from .served_model import DEFAULT_SEED, ServedModel

logger = logging.getLogger("moshi.server")

DEFAULT_PORT = 8998


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moshi-server-py", description="Talk to a Moshi model in the browser.")
    parser.add_argument("--host", default="localhost", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on (default: %(default)s)")
    parser.add_argument("--static", help="folder of another web client to serve at / (its index.html), or `none` for "
                                         "no page (default: this package's page)")
    parser.add_argument("--ssl", help="folder with key.pem and cert.pem: serve https and wss")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help="every conversation starts from this random seed (default: %(default)s); -1: never reseed")
    add_connection_flags(parser)
    model_flags.add_model_flags(parser, model_flags.UPSTREAM, default_repo=DEFAULT_REPO)
    model_flags.add_sampling_flags(parser)
    return parser


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    """How long a silent, dead or slow client may keep the model or get stale audio (see docs/server.md)."""
    parser.add_argument("--idle-timeout", type=float, metavar="S", default=ConversationLimits.idle_timeout_s,
                        help="close a conversation that sends no audio for S seconds, freeing the model for the next "
                             "client (default: %(default)g; 0: never)")
    parser.add_argument("--heartbeat", type=float, metavar="S", default=ServerSettings.heartbeat_s,
                        help="ping a client that sent nothing for S seconds and drop it if it does not answer within "
                             "S/2 (default: %(default)g; 0: no pings)")
    parser.add_argument("--max-frame-age", type=float, metavar="S", default=ConversationLimits.max_frame_age_s,
                        help="drop the reply frames that waited over S seconds for a client reading too slowly "
                             "(default: %(default)g)")


def connection_settings(args: argparse.Namespace) -> dict[str, object]:
    """The `ServerSettings` fields the connection flags set, checked (0 turns the idle timeout and pings off)."""
    limits = ConversationLimits(idle_timeout_s=seconds_flag("--idle-timeout", args.idle_timeout, zero_is_off=True),
                                max_frame_age_s=seconds_flag("--max-frame-age", args.max_frame_age, zero_is_off=False))
    return {"heartbeat_s": seconds_flag("--heartbeat", args.heartbeat, zero_is_off=True), "conversation": limits}


def seconds_flag(flag: str, value: float, zero_is_off: bool) -> float | None:
    if math.isfinite(value) and (value > 0 or (value == 0 and zero_is_off)):
        return value or None
    expected = "0 (off) or more" if zero_is_off else "more than 0"
    raise ValueError(f"{flag} {value:g}: expected a number of seconds, {expected}")


def static_dir_from_flag(value: str | None) -> Path | None:
    """The folder `--static` names (None for `none`), checked to hold an index.html."""
    if value is None:
        return bundled_page_dir()
    if value == "none":
        return None
    folder = Path(value)
    if not (folder / "index.html").is_file():
        raise ValueError(f"--static {value}: no index.html in that folder")
    return folder


def ssl_context_from_flag(value: str | None) -> ssl.SSLContext | None:
    if value is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile=os.path.join(value, "cert.pem"), keyfile=os.path.join(value, "key.pem"))
    except (OSError, ssl.SSLError) as error:
        raise ValueError(f"--ssl {value}: cannot load cert.pem and key.pem ({error})") from error
    return context


def load_served_model(args: argparse.Namespace) -> ServedModel:
    """Resolve and load the checkpoint the flags name, ready to serve (warmed up on a GPU)."""
    request = model_flags.ModelRequest.from_args(args, model_flags.UPSTREAM, default_repo=DEFAULT_REPO)
    resolved, device = model_flags.open_model(request, args.device)
    sampling = model_flags.sampling_settings(args, resolved.info)
    logger.info("loading Mimi from %s", resolved.info.mimi_weights)
    mimi = resolved.load_mimi(device)
    tokenizer = resolved.load_tokenizer()
    logger.info("loading the LM from %s", resolved.info.moshi_weights)
    lm = resolved.load_lm(device, model_flags.resolve_dtype(args.dtype, device))
    model = ServedModel(mimi, LMGen(lm, **sampling), tokenizer, seed=None if args.seed < 0 else args.seed)
    if torch.device(device).type == "cuda":
        logger.info("warming up (capturing CUDA graphs)")
        model.warmup()
    return model


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model_flags.warnings_on_one_line()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    hf_logging.disable_propagation()  # huggingface_hub prints its own messages; through ours too they would show twice
    try:
        settings = ServerSettings(static_dir=static_dir_from_flag(args.static), **connection_settings(args))
        ssl_context = ssl_context_from_flag(args.ssl)
        with torch.no_grad():
            model = load_served_model(args)
    except model_flags.EXPECTED_ERRORS as error:
        return model_flags.report_error(error)
    scheme = "https" if ssl_context else "http"
    logger.info("serving %s on %s://%s:%d", settings.static_dir or "no page", scheme, args.host, args.port)
    try:
        web.run_app(build_app(model, settings), host=args.host, port=args.port, ssl_context=ssl_context,
                    print=None)
    except OSError as error:
        return model_flags.report_error(OSError(f"cannot listen on {args.host}:{args.port}: "
                                                f"{model_flags.error_line(error)}"))
    return 0
