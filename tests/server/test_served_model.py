"""`ServedModel`: frames in, reply frames out; every conversation from a fresh state (TTT fast weights included)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from chat_helpers import FRAME, TokenRecorder, load_demo_model, wav_frames

from moshi.models import LMGen, loaders
from moshi.modules.ttt import TTTLayer
from moshi.server.served_model import ServedModel
from moshi.utils.compile import no_cuda_graph

FRAMES = 20  # past the TTT mini-batch of 16 tokens: the fast weights take a step


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    return wav_frames(tmp_path_factory.mktemp("wav"), FRAMES * FRAME / 24000, seed=4)


def conversation(model: ServedModel, frames: list[np.ndarray], recorder: TokenRecorder,
                 start: bool = True) -> tuple[torch.Tensor, list[np.ndarray]]:
    if start:
        model.start_conversation()
    replies = [model.step(frame) for frame in frames]
    return recorder.take(), [reply.pcm for reply in replies if reply is not None]


def ttt_layers(model: ServedModel) -> list[TTTLayer]:
    layers = [module for module in model.lm_gen.lm_model.modules() if isinstance(module, TTTLayer)]
    assert layers, "the demo model has TTT layers"
    return layers


def fast_weights_at_start(layer: TTTLayer) -> bool:
    initial = layer.initial_fast_weights()
    return all(torch.equal(layer.streaming_state.weights[name][0], initial[name]) for name in initial)


def test_a_new_conversation_forgets_the_last_one_ttt_fast_weights_included(demo_checkpoint: Path,
                                                                           frames: list[np.ndarray]) -> None:
    recorder = TokenRecorder()
    model = load_demo_model(demo_checkpoint, recorder=recorder)
    first_tokens, first_pcm = conversation(model, frames, recorder)
    assert first_tokens.shape == (FRAMES, 9) and len(first_pcm) == FRAMES - 1  # the first step only fills the delays
    assert not any(fast_weights_at_start(layer) for layer in ttt_layers(model))  # the fast weights learned
    model.start_conversation()
    assert all(fast_weights_at_start(layer) for layer in ttt_layers(model))
    second_tokens, second_pcm = conversation(model, frames, recorder, start=False)
    assert torch.equal(second_tokens, first_tokens)
    np.testing.assert_allclose(np.stack(second_pcm), np.stack(first_pcm), atol=1e-6, rtol=0)

    torch.manual_seed(model.seed)  # the same seed but the previous conversation's state: another reply
    carried_over_tokens, _ = conversation(model, frames, recorder, start=False)
    assert not torch.equal(carried_over_tokens, first_tokens)


def test_warmup_leaves_a_fresh_state(demo_checkpoint: Path, frames: list[np.ndarray]) -> None:
    recorder = TokenRecorder()
    model = load_demo_model(demo_checkpoint, recorder=recorder)
    expected, _ = conversation(model, frames[:6], recorder)
    model.warmup()
    recorder.take()
    assert torch.equal(conversation(model, frames[:6], recorder, start=False)[0], expected)


def test_text_pieces(demo_checkpoint: Path) -> None:
    model = load_demo_model(demo_checkpoint)
    lm = model.lm_gen.lm_model
    assert model.text_piece(lm.text_padding_token_id) == "" and model.text_piece(lm.end_of_text_padding_id) == ""
    word_starts = [token for token in range(4, lm.text_card) if model.tokenizer.id_to_piece(token).startswith("\u2581")]
    piece = model.tokenizer.id_to_piece(word_starts[0])
    assert model.text_piece(word_starts[0]) == " " + piece[1:]


def test_wrong_frames_and_tokenizers_are_refused(demo_checkpoint: Path) -> None:
    model = load_demo_model(demo_checkpoint)
    model.start_conversation()
    with pytest.raises(ValueError, match=r"one frame of 1920 samples, got shape \[960\]"):
        model.step(np.zeros(960, dtype=np.float32))
    info = loaders.CheckpointInfo.from_hf_repo(demo_checkpoint)
    tokenizer = info.get_text_tokenizer()
    bigger = loaders.get_moshi_lm(None, info.lm_config | {"text_card": tokenizer.vocab_size() + 10},
                                  dtype=torch.float32)
    with pytest.raises(ValueError, match=f"{tokenizer.vocab_size()} pieces but the model's text_card is "
                                         f"{tokenizer.vocab_size() + 10}"):
        ServedModel(info.get_mimi(), LMGen(bigger), tokenizer)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_cuda_graphs_replay_the_plain_steps(demo_checkpoint: Path, frames: list[np.ndarray]) -> None:
    info = loaders.CheckpointInfo.from_hf_repo(demo_checkpoint)
    recorder = TokenRecorder()
    lm_gen = LMGen(info.get_moshi(device="cuda", dtype=torch.float32), on_text_hook=recorder.on_text,
                   on_audio_hook=recorder.on_audio)
    model = ServedModel(info.get_mimi(device="cuda"), lm_gen, info.get_text_tokenizer(), seed=1234)
    model.warmup()
    recorder.take()
    graphed_tokens, graphed_pcm = conversation(model, frames, recorder)
    with no_cuda_graph():
        plain_tokens, plain_pcm = conversation(model, frames, recorder)
    assert torch.equal(graphed_tokens, plain_tokens)
    np.testing.assert_allclose(np.stack(graphed_pcm), np.stack(plain_pcm), atol=1e-4, rtol=0)
