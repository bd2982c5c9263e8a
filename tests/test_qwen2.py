"""The decoder equals transformers.Qwen2ForCausalLM on tiny random configs, with and without a KV cache."""

from __future__ import annotations

import pytest
import torch
import transformers

from longvid.llm import KVCache, Qwen2Config, Qwen2ForCausalLM


def twins(heads=6, kv_heads=2, tie=False, impl="sdpa"):
    torch.manual_seed(0)
    hf_cfg = transformers.Qwen2Config(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=3,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        rope_theta=10000.0,
        tie_word_embeddings=tie,
    )
    hf = transformers.Qwen2ForCausalLM(hf_cfg).eval()
    cfg = Qwen2Config.from_dict(hf_cfg.to_dict())
    cfg.attn_implementation = impl
    ours = Qwen2ForCausalLM(cfg).eval()
    state = hf.state_dict()
    if tie:
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    ours.load_state_dict(state, strict=not tie)
    return hf, ours


@pytest.mark.parametrize(
    "heads,kv_heads,tie,impl", [(6, 2, False, "sdpa"), (6, 6, True, "sdpa"), (6, 3, False, "eager")]
)
def test_plain_decoder_matches_transformers(heads, kv_heads, tie, impl):
    hf, ours = twins(heads, kv_heads, tie, impl)
    ids = torch.randint(0, 97, (2, 19))
    with torch.no_grad():
        ref = hf(ids, output_hidden_states=True)
        out = ours(ours.embed(ids), output_hidden_states=True)
    torch.testing.assert_close(ours.logits(out.hidden), ref.logits, atol=1e-5, rtol=1e-5)
    assert len(out.hidden_states) == len(ref.hidden_states) == 3 + 1  # embeddings + one per layer
    for a, b in zip(out.hidden_states, ref.hidden_states):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_incremental_cache_matches_full_forward():
    hf, ours = twins()
    ids = torch.randint(0, 97, (1, 23))
    cache = KVCache(3)
    with torch.no_grad():
        ref = hf(ids).logits
        parts = [
            ours.logits(ours(ours.embed(ids[:, a:b]), cache).hidden) for a, b in ((0, 9), (9, 16), (16, 17), (17, 23))
        ]
    torch.testing.assert_close(torch.cat(parts, 1), ref, atol=1e-5, rtol=1e-5)
    assert cache.lengths == [23, 23, 23]


def test_greedy_generate_matches_transformers():
    hf, ours = twins()
    ids = torch.randint(0, 97, (1, 7))
    with torch.no_grad():
        ref = hf.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=0)[0, 7:].tolist()
        cache = KVCache(3)
        logits = ours.logits(ours(ours.embed(ids), cache).hidden[:, -1])[0]
        got = []
        for _ in range(10):
            got.append(int(logits.argmax()))
            logits = ours.logits(ours(ours.embed(torch.tensor([[got[-1]]])), cache).hidden[:, -1])[0]
    assert got == ref


def test_cache_crop_restores_a_prefix():
    _, ours = twins()
    ids = torch.randint(0, 97, (1, 12))
    cache = KVCache(3)
    with torch.no_grad():
        ours(ours.embed(ids[:, :8]), cache)
        snapshot = cache.lengths.copy()
        a = ours.logits(ours(ours.embed(ids[:, 8:]), cache).hidden)
        cache.crop(snapshot)
        b = ours.logits(ours(ours.embed(ids[:, 8:]), cache).hidden)
    torch.testing.assert_close(a, b)
