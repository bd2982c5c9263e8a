"""Logits processing equals transformers' processors; settings merge like generate()."""

from __future__ import annotations

import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from longvid.generation import GenerationConfig, generate, process_logits


def test_matches_transformers_processors():
    torch.manual_seed(0)
    logits = torch.randn(50) * 3
    generated = [3, 7, 7, 12]
    cfg = GenerationConfig(do_sample=True, temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.05)
    ids = torch.tensor([generated])
    ref = logits[None].clone()
    for proc in (
        RepetitionPenaltyLogitsProcessor(1.05),
        TemperatureLogitsWarper(0.7),
        TopKLogitsWarper(20),
        TopPLogitsWarper(0.8),
    ):
        ref = proc(ids, ref)
    torch.testing.assert_close(process_logits(logits, generated, cfg), ref[0])


def test_greedy_keeps_the_penalty_only():
    logits = torch.tensor([1.0, -2.0, 3.0])
    cfg = GenerationConfig(repetition_penalty=2.0, temperature=0.1, top_k=1)
    torch.testing.assert_close(process_logits(logits, [1, 2], cfg), torch.tensor([1.0, -4.0, 1.5]))


def test_config_merge_and_stop():
    cfg = GenerationConfig().updated({"do_sample": True, "temperature": 0.7, "eos_token_id": 5, "num_beams": 1})
    assert cfg.eos_token_id == [5] and not cfg.greedy
    cfg = cfg.updated({"do_sample": False})
    seq = iter([torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.0, 1.0, 0.0])])
    result = generate(torch.tensor([1.0, 0.0, 0.0]), lambda t: next(seq), cfg, stop_ids={1})
    assert result.token_ids == [0, 2] and result.finish_reason == "stop"


def test_sampling_is_seeded():
    cfg = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, max_new_tokens=8, seed=3)
    logits = torch.zeros(20)
    a = generate(logits, lambda t: logits, cfg, set()).token_ids
    b = generate(logits, lambda t: logits, cfg, set()).token_ids
    assert a == b and len(set(a)) > 1
