"""Offline Moshi inference with upstream's command line: `python -m moshi.run_inference [flags] infile [outfile]`.

The input (any file soundfile can read; its first channel, resampled to Mimi's sample rate) is cut into whole Mimi
frames and streamed through Mimi and `LMGen`, which samples the model's reply with the checkpoint's `lm_gen_config`.
The same input is given to every item of the batch (`--batch-size`, default 8); the first frame is fed twice so that the
model sees it (its first step only primes the delayed streams), which makes each reply exactly as long as the input's
whole frames. The text of item 0 is printed as it is generated; with `outfile`, each item's audio is written as a 24 kHz
wav (`name-<i>.wav` when the batch has several items). Progress goes to stderr, text to stdout, and a bad flag, file or
checkpoint ends with one `error:` line (exit status 2).

The model is named with the flags of `moshi.models.model_flags` (upstream's spelling shown, ours accepted;
`--checkpoint` for a moshi-finetune checkpoint folder; docs/naming_a_model.md); `--temp`, `--temp-text`, `--top-k` and
`--top-k-text` replace the checkpoint's sampling settings and `--seed` sets the seed (default upstream's, 4242).

`--report PATH` writes the talk report of every item (`moshi.utils.talk_report`: per bin of `--report-bin-seconds`,
text tokens per minute, PAD fraction, silence fraction below `--report-silence-dbfs`, repeated text 4-grams) as JSON,
and one summary line per item on stderr; docs/inference.md.

Needs soundfile and soxr (`pip install 'moshi[inference]'`). Only Moshi dialogue checkpoints are supported, with
`--cfg-coef 1`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from .models import model_flags
from .models.compression import MimiModel
from .models.lm import LMGen, LMModel
from .models.loaders import DEFAULT_REPO
from .utils import files, talk_report

SEED = 4242
"""The seed upstream's offline inference sets, for comparable sampling (the default of `--seed`)."""
REPORT_FLAGS = {"bin_seconds": "--report-bin-seconds", "silence_dbfs": "--report-silence-dbfs"}
"""The `TalkSettings` fields the report's flags set (`args.report_<field>`)."""


class InferenceError(Exception):
    """A problem with the input or output files that ends the command with one `error:` line."""


@dataclasses.dataclass
class Reply:
    """What the model said: `text_tokens` `[B, T]`, one per returned frame; `pcm` `[B, channels, T * frame_size]`."""

    text_tokens: torch.Tensor
    pcm: torch.Tensor


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moshi-inference", description="Run Moshi offline on an audio file and write its spoken reply.")
    model_flags.add_model_flags(parser, model_flags.UPSTREAM, default_repo=DEFAULT_REPO,
                                config_flags=("--config", "--lm-config"))
    model_flags.add_sampling_flags(parser)
    parser.add_argument("--seed", type=int, default=SEED, help="random seed of the sampling (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="replies sampled in parallel (default: %(default)s)")
    parser.add_argument("infile", help="input audio file (any format soundfile reads)")
    parser.add_argument("outfile", nargs="?", default="",
                        help="output wav; with several batch items, name-<i>.wav for item i (default: no audio)")
    report = parser.add_argument_group("talk report (does the model keep talking? docs/inference.md)")
    report.add_argument("--report", metavar="PATH", help="write each item's text tokens per minute, PAD fraction, "
                                                         "silence fraction and repeated text 4-grams per time bin as "
                                                         "JSON, and one summary line per item on stderr")
    report.add_argument("--report-bin-seconds", type=float, metavar="S",
                        help=f"length of the report's time bins, rounded to whole 80 ms frames (default: "
                             f"{talk_report.DEFAULT_BIN_SECONDS:g})")
    report.add_argument("--report-silence-dbfs", type=float, metavar="DB",
                        help=f"an output frame whose RMS is below DB dBFS counts as silent (default: "
                             f"{talk_report.DEFAULT_SILENCE_DBFS:g})")
    return parser


def audio_libraries() -> tuple[ModuleType, ModuleType]:
    """soundfile and soxr, or an InferenceError saying how to install them."""
    try:
        import soundfile
        import soxr
    except ImportError as error:
        raise InferenceError(f"reading and writing audio needs soundfile and soxr ({error}): "
                             "pip install 'moshi[inference]'") from error
    return soundfile, soxr


def read_mono(path: str | Path, sample_rate: int) -> torch.Tensor:
    """First channel of the audio file at `path`, resampled to `sample_rate`, as float32 `[1, N]`."""
    soundfile, soxr = audio_libraries()
    try:
        samples, file_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (OSError, RuntimeError) as error:
        raise InferenceError(f"cannot read audio file {path}: {error}") from error
    mono = samples[:, 0]
    if file_rate != sample_rate:
        mono = soxr.resample(mono, file_rate, sample_rate).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(mono))[None]


def whole_frames(pcm: torch.Tensor, frame_size: int) -> list[torch.Tensor]:
    """`pcm` `[B, C, N]` cut into `[B, C, frame_size]` frames; a last partial frame is dropped."""
    count = pcm.shape[-1] // frame_size
    return [pcm[..., i * frame_size: (i + 1) * frame_size] for i in range(count)]


def output_paths(outfile: str | Path, batch_size: int) -> list[Path]:
    """Where each batch item's wav goes: `outfile` alone, or `stem-<i>suffix` beside it for several items."""
    path = Path(outfile)
    if batch_size == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{index}{path.suffix}") for index in range(batch_size)]


def text_piece(tokenizer, lm: LMModel, token: int) -> str:
    """The printable text of one sampled text token; padding tokens print nothing."""
    if token in lm.text_padding_ids:
        return ""
    return tokenizer.id_to_piece(token).replace("\u2581", " ")


@torch.no_grad()
def reply_to(
    frames: Sequence[torch.Tensor], mimi: MimiModel, lm_gen: LMGen, on_text: Callable[[int], None] | None = None,
) -> Reply:
    """Stream `frames` (`[B, C, frame_size]` each) through Mimi and `lm_gen`; `on_text` gets item 0's text tokens.

    The first frame is fed twice, as upstream does: the first step only primes the delayed streams.
    """
    batch_size = frames[0].shape[0]
    texts: list[torch.Tensor] = []
    pcms: list[torch.Tensor] = []
    with mimi.streaming(batch_size), lm_gen.streaming(batch_size):
        for index, frame in enumerate(frames):
            codes = mimi.encode(frame)
            if index == 0:
                lm_gen.step(codes)
            tokens = lm_gen.step(codes)
            if tokens is None:
                continue
            texts.append(tokens[:, 0, 0].cpu())
            pcms.append(mimi.decode(tokens[:, 1:]).float().cpu())
            if on_text is not None:
                on_text(int(texts[-1][0]))
    return Reply(torch.stack(texts, dim=1), torch.cat(pcms, dim=-1))


def write_wavs(pcm: torch.Tensor, paths: Sequence[Path], sample_rate: int) -> None:
    """Item i of `pcm` `[B, C, N]` to `paths[i]` as 16-bit wav."""
    soundfile, _ = audio_libraries()
    for item, path in zip(pcm, paths):
        try:
            soundfile.write(str(path), item.T.numpy(), sample_rate, format="WAV", subtype="PCM_16")
        except (OSError, RuntimeError) as error:
            raise InferenceError(f"cannot write {path}: {error}") from error


def talk_settings(args: argparse.Namespace) -> talk_report.TalkSettings | None:
    """The report's settings from the flags, checked (the report's path too) before anything loads; None without
    `--report`."""
    given = {field: getattr(args, f"report_{field}") for field in REPORT_FLAGS
             if getattr(args, f"report_{field}") is not None}
    if args.report is None:
        if given:
            raise InferenceError(f"{REPORT_FLAGS[next(iter(given))]} needs --report PATH")
        return None
    files.check_output_file(args.report, "--report")
    for field, value in given.items():
        try:
            talk_report.TalkSettings(**{field: value})
        except ValueError as error:
            raise InferenceError(f"{REPORT_FLAGS[field]} {value:g}: {error}") from error
    return talk_report.TalkSettings(**given)


def talk_of(reply: Reply, frame_size: int, frame_seconds: float, pad_ids: Sequence[int],
            settings: talk_report.TalkSettings) -> talk_report.TalkMeter:
    """The reply's talk meter, fed frame by frame."""
    meter = talk_report.TalkMeter(reply.text_tokens.shape[0], frame_seconds, pad_ids, settings)
    for step, frame in enumerate(whole_frames(reply.pcm, frame_size)):
        meter.update(reply.text_tokens[:, step], frame)
    return meter


def write_talk_report(args: argparse.Namespace, meter: talk_report.TalkMeter, run_settings: dict) -> None:
    """The report file (the meter's settings with `run_settings`) and one summary line per item on stderr."""
    if not math.isclose(meter.bin_seconds, meter.settings.bin_seconds):
        model_flags.print_note(f"--report-bin-seconds {meter.settings.bin_seconds:g}: bins of {meter.bin_frames} "
                               f"whole frames ({meter.bin_seconds:g} s)")
    figures = meter.figures()
    try:
        talk_report.write_report(args.report, figures, meter.describe() | run_settings)
    except OSError as error:
        raise InferenceError(f"cannot write --report {args.report}: {model_flags.error_line(error)}") from error
    for index, item in enumerate(figures):
        log(f"talk of item {index}: {talk_report.summary_line(item, meter.settings.ngram, meter.bin_seconds)}")
    log(f"wrote the talk report {args.report}")


def run(args: argparse.Namespace) -> Reply:
    """Everything `main` does, returning the reply (item 0's text is printed, wavs and the report are written on the
    way)."""
    if args.batch_size < 1:
        raise InferenceError(f"--batch-size must be at least 1, got {args.batch_size}")
    report_settings = talk_settings(args)
    request = model_flags.ModelRequest.from_args(args, model_flags.UPSTREAM, default_repo=DEFAULT_REPO)
    torch.manual_seed(args.seed)
    resolved, device = model_flags.open_model(request, args.device)
    if resolved.info.model_type != "moshi":
        raise InferenceError(f"model type {resolved.info.model_type!r}: only Moshi dialogue checkpoints are supported "
                             "here")
    sampling = model_flags.sampling_settings(args, resolved.info)
    log("loading Mimi, the text tokenizer and Moshi")
    mimi = resolved.load_mimi(device)
    tokenizer = resolved.load_tokenizer()
    lm = resolved.load_lm(device, model_flags.resolve_dtype(args.dtype, device))
    pcm = read_mono(args.infile, mimi.sample_rate).to(device)
    frames = whole_frames(pcm[None].expand(args.batch_size, -1, -1), mimi.frame_size)
    if not frames:
        raise InferenceError(f"{args.infile} is shorter than one Mimi frame ({mimi.frame_size} samples at "
                             f"{mimi.sample_rate} Hz)")
    log(f"{len(frames)} frames of {args.infile}, batch of {args.batch_size}")
    lm_gen = LMGen(lm, **sampling)
    reply = reply_to(frames, mimi, lm_gen, on_text=lambda token: print_text(text_piece(tokenizer, lm, token)))
    print(flush=True)
    if args.outfile:
        paths = output_paths(args.outfile, args.batch_size)
        write_wavs(reply.pcm, paths, mimi.sample_rate)
        seconds = reply.pcm.shape[-1] / mimi.sample_rate
        log(f"wrote {', '.join(map(str, paths))} ({seconds:.2f} s each)")
    if report_settings is not None:
        meter = talk_of(reply, mimi.frame_size, mimi.frame_size / mimi.sample_rate, lm.text_padding_ids,
                        report_settings)
        write_talk_report(args, meter, {"infile": str(args.infile), "batch_size": args.batch_size, "seed": args.seed,
                                        "sampling": sampling, "model": request.describe()})
    return reply


def print_text(piece: str) -> None:
    print(piece, end="", flush=True)


def log(message: str) -> None:
    print(f"[info] {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model_flags.warnings_on_one_line()
    try:
        run(args)
    except (InferenceError, *model_flags.EXPECTED_ERRORS) as error:
        return model_flags.report_error(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
