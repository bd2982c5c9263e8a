"""Prefill in bounded blocks equals one unchunked pass: attention, the decoder with and without a cached
prefix, the attention-ranked token drop and Video-XL's beacon windows; and no block grows with the context."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import longvid
from longvid.compress.token_drop import (
    TokenDropConfig,
    VideoTokenDrop,
    attention_column_means,
)
from longvid.llm import KVCache, Qwen2Config, Qwen2ForCausalLM, qwen2
from longvid.tiny import make_tiny_video_xl

UNCHUNKED = 10**9
CHUNKS = [1, 4, 7, 16, 25]  # 7 and 25 divide none of the lengths below


def reference_attention(q, k, v, n_past):
    """Softmax attention written out: query i (position n_past + i) sees keys 0..n_past + i."""
    k = k.repeat_interleave(q.shape[1] // k.shape[1], 1)
    v = v.repeat_interleave(q.shape[1] // v.shape[1], 1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    n, total = q.shape[2], k.shape[2]
    future = torch.arange(total)[None, :] > (n_past + torch.arange(n))[:, None]
    return torch.softmax(scores.masked_fill(future, float("-inf")), -1) @ v


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("n_past,n", [(0, 23), (13, 23), (13, 1), (40, 5)])
@pytest.mark.parametrize("rows", [1, 3, 8, 100])
def test_attention_blocks_equal_one_pass(impl, n_past, n, rows):
    g = torch.Generator().manual_seed(n_past * 100 + n)
    q = torch.randn(2, 6, n, 16, generator=g)
    k, v = torch.randn(2, 2, n_past + n, 16, generator=g), torch.randn(2, 2, n_past + n, 16, generator=g)
    out = qwen2.attention(q, k, v, n_past, impl, block_rows=rows)
    assert out.shape == q.shape
    torch.testing.assert_close(out, reference_attention(q, k, v, n_past), atol=2e-6, rtol=1e-5)


def test_masked_blocks_stay_under_the_budget_whatever_the_context(monkeypatch):
    """The block rows shrink as the keys grow, so no mask is bigger than ATTN_BLOCK_ELEMENTS entries."""
    sizes = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        sizes.append(0 if attn_mask is None else attn_mask.numel())
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(qwen2, "_FLASH_CPU", None)  # the masked path (GPU, or a torch without the CPU kernel)
    monkeypatch.setattr(qwen2, "ATTN_BLOCK_ELEMENTS", 600)
    monkeypatch.setattr(qwen2.F, "scaled_dot_product_attention", spy)
    for n_past in (10, 100, 290):
        sizes.clear()
        q, k, v = torch.randn(1, 4, 30, 8), torch.randn(1, 2, n_past + 30, 8), torch.randn(1, 2, n_past + 30, 8)
        out = qwen2.attention(q, k, v, n_past)
        torch.testing.assert_close(out, reference_attention(q, k, v, n_past), atol=2e-6, rtol=1e-5)
        rows = max(1, 600 // (n_past + 30))  # 15, 4, 1 (single rows need no mask)
        assert len(sizes) == math.ceil(30 / rows) and max(sizes) <= 600
        assert (max(sizes) > 0) == (rows > 1)


@pytest.mark.skipif(qwen2._FLASH_CPU is None, reason="this torch has no CPU flash kernel with log-sum-exp")
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("n_past,n", [(1, 9), (13, 23), (300, 40)])
def test_split_attention_equals_masked_blocks_without_a_mask(monkeypatch, dtype, tol, n_past, n):
    """Queries after cached keys: two unmasked flash calls merged by log-sum-exp equal the masked blocks,
    and no mask is built; with gradients on, the masked path runs (the log-sum-exp has no gradient)."""
    g = torch.Generator().manual_seed(n_past + n)
    q = torch.randn(1, 4, n, 16, generator=g)
    k, v = torch.randn(1, 2, n_past + n, 16, generator=g), torch.randn(1, 2, n_past + n, 16, generator=g)
    masks = []
    real = F.scaled_dot_product_attention

    def spy(*a, attn_mask=None, **kw):
        masks.append(attn_mask)
        return real(*a, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(qwen2.F, "scaled_dot_product_attention", spy)
    out = qwen2.attention(q.to(dtype), k.to(dtype), v.to(dtype), n_past)
    assert out.dtype == dtype and masks == []
    torch.testing.assert_close(out.float(), reference_attention(q, k, v, n_past), atol=tol, rtol=tol)
    q.requires_grad_(True)
    out = qwen2.attention(q, k, v, n_past)
    assert masks and masks[-1] is not None  # the masked blocks, whose gradient is right
    out.sum().backward()
    ref = q.detach().clone().requires_grad_(True)
    reference_attention(ref, k, v, n_past).sum().backward()
    torch.testing.assert_close(q.grad, ref.grad, atol=1e-5, rtol=1e-4)


def tiny_llm(chunk: int, **extra) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=61,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        rope_theta=10000.0,
        max_position_embeddings=512,
        **extra,
    )
    model = Qwen2ForCausalLM(cfg).eval()
    model.config.prefill_chunk = chunk
    return model


def prefill(model: Qwen2ForCausalLM, ids: torch.Tensor, prefix: int):
    """Cache `prefix` tokens in one step, then feed the rest; all logits of the second step and the cache."""
    cache = KVCache(model.config.num_hidden_layers)
    with torch.no_grad():
        if prefix:
            model(model.embed(ids[:, :prefix]), cache)
        hidden = model(model.embed(ids[:, prefix:]), cache).hidden
    return model.logits(hidden), cache


@pytest.mark.parametrize("prefix", [0, 9])
@pytest.mark.parametrize("chunk", CHUNKS)
def test_chunked_prefill_equals_one_pass(prefix, chunk):
    ids = torch.randint(0, 61, (1, 9 + 40), generator=torch.Generator().manual_seed(1))
    ref_logits, ref_cache = prefill(tiny_llm(UNCHUNKED), ids, prefix)
    logits, cache = prefill(tiny_llm(chunk), ids, prefix)
    assert logits.shape == ref_logits.shape == (1, 49 - prefix, 61)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    assert cache.lengths == ref_cache.lengths == [49] * 3
    for layer in range(3):
        for got, want in zip(cache.get(layer), ref_cache.get(layer)):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_chunked_prefill_then_decode_gives_the_same_tokens():
    ids = torch.randint(0, 61, (1, 45), generator=torch.Generator().manual_seed(2))
    runs = []
    for chunk in (UNCHUNKED, 6):
        model = tiny_llm(chunk)
        logits, cache = prefill(model, ids, 11)
        token, tokens = int(logits[0, -1].argmax()), []
        with torch.no_grad():
            for _ in range(8):
                tokens.append(token)
                token = int(model.logits(model(model.embed(torch.tensor([[token]])), cache).hidden)[0, -1].argmax())
        runs.append(tokens)
    assert runs[0] == runs[1] and len(runs[0]) == 8


@pytest.mark.parametrize("kind", ["attention", "uniform0_attention"])
@pytest.mark.parametrize("chunk", [3, 7, 20])
def test_attention_ranked_drop_keeps_the_same_rows_chunked(kind, chunk):
    g = torch.Generator().manual_seed(3)
    text, num_visual, tail = 5, 40, 9
    drop = VideoTokenDrop(TokenDropConfig(type=kind, layers=[1, 2], ratios=[1.0, 0.5, 0.25]))
    embeds = torch.randn(1, text + num_visual + tail, 48, generator=g)
    results = []
    for c in (UNCHUNKED, chunk):
        model, rows = tiny_llm(c), []
        cache = KVCache(3)
        with torch.no_grad():
            hidden = model(embeds, cache, after_layer=drop.hook(model, text, num_visual, rows)).hidden
        results.append((model.logits(hidden[:, -1]), [r.tolist() for r in rows], cache.lengths))
    (ref, ref_rows, ref_len), (got, rows, lengths) = results
    assert rows == ref_rows and len(rows) == 2 and len(rows[1]) == text + 10 + tail
    assert lengths == ref_len == [54, 54 - 20, 54 - 30]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("budget", [10**9, 200, 1])
def test_column_means_in_query_blocks_equal_the_full_matrix(monkeypatch, budget):
    """Several query rows (the training-time ranking) in blocks: the same column means as [heads, q, k] at once."""
    monkeypatch.setattr("longvid.compress.token_drop.ATTN_BLOCK_ELEMENTS", budget)
    model = tiny_llm(UNCHUNKED)
    hidden = torch.randn(1, 30, 48, generator=torch.Generator().manual_seed(4))
    positions, rows = torch.arange(30), [4, 17, 18, 29]
    got = attention_column_means(model, 1, hidden, positions, rows)
    attn = model.model.layers[1].self_attn
    with torch.no_grad():
        h = model.model.layers[1].input_layernorm(hidden)
        q, k, _, _ = attn.qkv(h, positions)
        want = reference_attention_probs(q, k)[:, :, rows].mean(dim=(1, 2))[0]
    assert got.shape == (30,) and float(got.sum()) == pytest.approx(1.0, abs=1e-5) and float(got[18:].sum()) > 0
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def reference_attention_probs(q, k):
    k = k.repeat_interleave(q.shape[1] // k.shape[1], 1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    n = q.shape[2]
    return torch.softmax(scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf")), -1)


@pytest.fixture(scope="module")
def video_xl(tmp_path_factory):
    ckpt = make_tiny_video_xl(
        tmp_path_factory.mktemp("vxl") / "ckpt",
        seed=5,
        hidden=48,
        layers=3,
        heads=6,
        kv_heads=2,
        intermediate=96,
        image_size=84,
        patch=14,
        vision_dim=32,
        vision_layers=2,
        window=20,
        ratios=[3],
    )
    return longvid.load(ckpt)


@pytest.mark.parametrize("chunk", [3, 7])
def test_beacon_windows_and_text_chunked_equal_one_pass(video_xl, chunk):
    """Windows of 20 raw rows + VSTs after a 6-token prefix, then 30 text tokens: same cache and logits."""
    llm = video_xl.model.llm
    visual = torch.randn(1, 63, 48, generator=torch.Generator().manual_seed(6))
    prefix = llm.embed(torch.tensor([[1, 2, 3, 4, 5, 6]]))
    text = llm.embed(torch.randint(0, 500, (1, 30), generator=torch.Generator().manual_seed(7)))
    plan = video_xl.beacon_plan(63)
    out = []
    for c in (UNCHUNKED, chunk):
        llm.config.prefill_chunk = c
        cache = video_xl.new_cache()
        with torch.no_grad():
            video_xl.model.prefill_video(prefix, visual, cache, plan)
            last = video_xl.model.extend_text(text, cache)
        out.append((llm.logits(last), cache))
    llm.config.prefill_chunk = Qwen2Config.prefill_chunk
    (ref, ref_cache), (got, cache) = out
    assert cache.lengths == ref_cache.lengths == [6 + plan.num_vst + 30] * 3
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    for layer in range(3):
        for a, b in zip(cache.get(layer), ref_cache.get(layer)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def spy_masks(monkeypatch) -> list[int]:
    sizes: list[int] = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        sizes.append(0 if attn_mask is None else attn_mask.numel())
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(qwen2.F, "scaled_dot_product_attention", spy)
    return sizes


@pytest.mark.parametrize("family", ["videochat_flash", "video_xl"])
def test_long_question_after_a_video_never_builds_a_full_mask(monkeypatch, tiny_model, video_xl, family):
    """The path of the 1.95 GB / 18.5 GB reports: a long question after a cached video prefix. Every mask the
    model builds stays under the block budget (on CPU it builds none), and the answer's logits are those of
    the unbudgeted run."""
    model = tiny_model if family == "videochat_flash" else video_xl
    g = torch.Generator().manual_seed(8)
    visual = torch.randn(48, model.config.llm.hidden_size, generator=g) * 0.02
    question = " ".join(["the red square moves left"] * 40)
    plan = longvid.video.SamplingPlan(list(range(3)), 1.0, 3.0, 3)
    ids = model.prompt_ids(model.conversation(question, plan))
    assert len(ids) > 150
    kernel = qwen2._FLASH_CPU
    with torch.no_grad():
        ref = model.prefill(ids, visual, model.new_cache())
        monkeypatch.setattr(qwen2, "ATTN_BLOCK_ELEMENTS", 10000)
        sizes = spy_masks(monkeypatch)
        split = model.prefill(ids, visual, model.new_cache())
        split_sizes, sizes[:] = list(sizes), []
        monkeypatch.setattr(qwen2, "_FLASH_CPU", None)  # the masked blocks (GPU, or no CPU flash kernel)
        got = model.prefill(ids, visual, model.new_cache())
    assert max(sizes) <= 10000 and max(sizes) > 0 and len(sizes) > 10
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    if kernel is not None:  # on CPU the question attends to the cached video through no mask at all
        assert max(split_sizes) == 0
    torch.testing.assert_close(split, ref, atol=1e-5, rtol=1e-5)
