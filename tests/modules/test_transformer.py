"""Streaming transformer: chunked streaming equals the parallel forward, also past the attention context."""

from __future__ import annotations

import pytest
import torch
from streaming_checks import assert_rollback_keeps_prefixes, assert_rollback_replays

from moshi.models.lm import LMModel
from moshi.modules.transformer import StreamingMultiheadAttention, StreamingTransformer, bounded_attention_context
from moshi.modules.ttt import TTTConfig

CONTEXT = 6
FRAMES = 40


def _chunks(T: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, T)) for i in range(0, T, size)]


@pytest.fixture
def transformer() -> StreamingTransformer:
    torch.manual_seed(0)
    return StreamingTransformer(
        d_model=32, num_heads=4, num_layers=2, dim_feedforward=132, causal=True, context=CONTEXT,
        positional_embedding="rope", norm="rms_norm_f32", gating="silu",
    ).eval()


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_streaming_chunks_equal_parallel_forward(transformer, chunk):
    x = torch.randn(2, FRAMES, 32)
    with torch.no_grad():
        reference = transformer(x)
        with transformer.streaming(2):
            streamed = torch.cat([transformer(x[:, part]) for part in _chunks(FRAMES, chunk)], dim=1)
    torch.testing.assert_close(streamed, reference, atol=1e-4, rtol=0)


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_lm_forward_text_streaming_chunks_equal_parallel(chunk):
    torch.manual_seed(1)
    lm = LMModel(
        delays=[0] * 5, n_q=4, dep_q=2, card=20, text_card=24, dim=32, num_heads=4, num_layers=2, context=CONTEXT,
        norm="rms_norm_f32", gating="silu", positional_embedding="rope", depformer_dim=16, depformer_num_heads=2,
        depformer_num_layers=1, depformer_multi_linear=True, depformer_weights_per_step=True, depformer_pos_emb="none",
        depformer_gating="silu",
    ).eval()
    sequence = torch.randint(0, 20, (2, 5, FRAMES))
    with torch.no_grad():
        ref_out, ref_logits = lm.forward_text(sequence)
        with lm.streaming(2):
            parts = [lm.forward_text(sequence[:, :, part]) for part in _chunks(FRAMES, chunk)]
    torch.testing.assert_close(torch.cat([p[0] for p in parts], dim=1), ref_out, atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.cat([p[1] for p in parts], dim=2), ref_logits, atol=1e-4, rtol=0)


def test_reset_of_one_item_matches_a_fresh_run(transformer):
    x = torch.randn(2, 15, 32)
    fresh = torch.randn(1, 10, 32)
    with torch.no_grad():
        expected_item1 = transformer(fresh)
        with transformer.streaming(2):
            for t in range(15):
                transformer(x[:, t: t + 1])
            transformer.reset_streaming(torch.tensor([False, True]))
            inputs = torch.cat([torch.randn(1, 10, 32), fresh], dim=0)
            after = torch.cat([transformer(inputs[:, t: t + 1]) for t in range(10)], dim=1)
        continued = transformer(torch.cat([x[:1], inputs[:1]], dim=1))
    torch.testing.assert_close(after[1:], expected_item1, atol=1e-4, rtol=0)
    torch.testing.assert_close(after[:1], continued[:, 15:], atol=1e-4, rtol=0)


def test_reset_of_every_item_replays_a_new_stream_bitwise(transformer):
    x, y = torch.randn(2, 9, 32), torch.randn(2, 7, 32)
    with torch.no_grad():
        with transformer.streaming(2):
            new = torch.cat([transformer(piece) for piece in y.split(3, dim=1)], dim=1)
        with transformer.streaming(2):
            transformer(x)
            transformer.reset_streaming()
            after_reset = torch.cat([transformer(piece) for piece in y.split(3, dim=1)], dim=1)
    assert torch.equal(after_reset, new)


def test_exec_mask_freezes_the_masked_item(transformer):
    x = torch.randn(2, 8, 32)
    with torch.no_grad():
        reference = transformer(x)
        with transformer.streaming(2):
            first = transformer(x[:, :4])
            transformer.set_exec_mask(torch.tensor([True, False]))
            transformer(torch.randn(2, 3, 32))
            transformer.set_exec_mask(torch.tensor([True, True]))
            rest = transformer(x[:, 4:])
    torch.testing.assert_close(first, reference[:, :4], atol=1e-4, rtol=0)
    torch.testing.assert_close(rest[1], reference[1, 4:], atol=1e-4, rtol=0)


def test_snapshot_and_restore_replays_the_same_outputs(transformer):
    assert_rollback_replays(transformer, torch.randn(2, 12, 32), split=5)


def test_stacked_projection_weights_load_into_per_step_projections():
    attention = StreamingMultiheadAttention(8, 2, causal=True, weights_per_step=3)
    stacked_in = torch.randn(3 * 24, 8)
    stacked_out = torch.randn(3 * 8, 8)
    attention.load_state_dict({"in_proj_weight": stacked_in, "out_proj.weight": stacked_out})
    for i in range(3):
        assert torch.equal(attention.in_projs[i].weight, stacked_in[24 * i: 24 * (i + 1)])
        assert torch.equal(attention.out_projs[i].weight, stacked_out[8 * i: 8 * (i + 1)])


def test_streaming_without_context_is_a_clear_error():
    transformer = StreamingTransformer(d_model=8, num_heads=2, num_layers=1, causal=True)
    with pytest.raises(ValueError, match="context"):
        transformer.streaming(1)


def test_failed_start_leaves_nothing_streaming():
    transformer = StreamingTransformer(d_model=8, num_heads=2, num_layers=1, causal=True)
    with pytest.raises(ValueError):
        transformer.streaming(1)
    assert not any(module.is_streaming for _, module in transformer.named_streaming_modules())


@pytest.mark.parametrize("span", [3, 5, 9])
def test_checkpoint_rollback_after_the_cache_wrapped(transformer, span):
    x = torch.randn(2, 30, 32)
    with torch.no_grad():
        reference = transformer(x)
        with transformer.streaming(2):
            transformer(x[:, :17])
            checkpoint = transformer.checkpoint_streaming(span)
            transformer(torch.randn(2, span, 32))
            transformer.rollback_streaming(checkpoint)
            streamed = transformer(x[:, 17:])
    torch.testing.assert_close(streamed, reference[:, 17:], atol=1e-4, rtol=0)


@pytest.mark.parametrize("keep", [[0, 6], [2, 5], [6, 1]])
def test_rollback_keeps_each_items_prefix_after_the_cache_wrapped(transformer, keep):
    assert_rollback_keeps_prefixes(transformer, torch.randn(2, 40, 32), split=17, span=CONTEXT, keep=keep)


def test_rollback_keeps_prefixes_with_a_ttt_layer():
    torch.manual_seed(1)
    blocks = TTTConfig(layers="1", variant="mlp", mini_batch_size=4).build_blocks(32, 4, 2)
    model = StreamingTransformer(d_model=32, num_heads=4, num_layers=2, dim_feedforward=132, causal=True, context=16,
                                 positional_embedding="rope", norm="rms_norm_f32", gating="silu",
                                 ttt_blocks=blocks).eval()
    assert_rollback_keeps_prefixes(model, torch.randn(3, 60, 32), split=9, span=12, keep=[0, 7, 12])


def test_rollback_keeping_steps_needs_a_span_within_the_cache(transformer):
    with torch.no_grad(), transformer.streaming(2):
        checkpoint = transformer.checkpoint_streaming(CONTEXT + 1)
        transformer(torch.randn(2, CONTEXT + 1, 32))
        with pytest.raises(ValueError, match="span of at most the cache"):
            transformer.rollback_streaming(checkpoint, torch.tensor([1, 2]))


def _saved_bytes_and_grads(module: StreamingTransformer, x: torch.Tensor) -> tuple[int, list[torch.Tensor]]:
    """Bytes autograd keeps for backward during one forward, and the parameter gradients of `out.square().sum()`."""
    saved = []

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    module.zero_grad()
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        out = module(x)
    out.square().sum().backward()
    return sum(saved), [p.grad.clone() for p in module.parameters()]


def test_checkpointing_keeps_less_for_backward_and_gives_the_same_gradients():
    torch.manual_seed(3)
    kwargs = {"d_model": 32, "num_heads": 4, "num_layers": 3, "dim_feedforward": 64, "causal": True,
              "context": CONTEXT, "positional_embedding": "rope", "gating": "silu"}
    plain = StreamingTransformer(**kwargs)
    checkpointed = StreamingTransformer(**kwargs, checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 24, 32)
    plain_bytes, plain_grads = _saved_bytes_and_grads(plain, x)
    checkpointed_bytes, checkpointed_grads = _saved_bytes_and_grads(checkpointed, x)
    assert checkpointed_bytes < plain_bytes / 3
    for got, want in zip(checkpointed_grads, plain_grads):
        torch.testing.assert_close(got, want)
    with torch.no_grad(), checkpointed.streaming(2):
        torch.testing.assert_close(checkpointed(x), plain(x), atol=1e-5, rtol=0)


def test_attention_contexts_are_set_per_layer_outside_streaming(transformer):
    transformer.set_attention_contexts({1: 3})
    assert transformer.attention_contexts() == [CONTEXT, 3]
    assert transformer.layers[1].self_attn.cache_capacity() == 3
    x = torch.randn(1, 12, 32)
    with torch.no_grad(), transformer.streaming(1):
        transformer(x[:, :4])
        with pytest.raises(RuntimeError, match="cannot change while streaming"):
            transformer.set_attention_contexts({0: 2})
    with pytest.raises(ValueError, match="at least 1 step"):
        transformer.set_attention_contexts({0: 0})


def test_a_bounded_context_gives_the_same_outputs_with_smaller_caches(transformer):
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        reference = transformer(x)
        with bounded_attention_context(transformer, 5), transformer.streaming(2):
            assert transformer.attention_contexts() == [5, 5]
            assert [layer.self_attn._streaming_state.capacity for layer in transformer.layers] == [5, 5]
            streamed = torch.cat([transformer(x[:, t: t + 1]) for t in range(5)], dim=1)
    assert transformer.attention_contexts() == [CONTEXT, CONTEXT]
    torch.testing.assert_close(streamed, reference, atol=1e-5, rtol=0)
