"""Every output recorded from the official Video-XL code on `video_xl_tiny`, at the README's tolerances.

Integers (ids, step layout, ratio draws, generated ids) must match exactly; pixels and vision features
within 1e-5, step hidden states and the cache within 5e-5, logits within 1e-4. Each stage is fed the
*reference* input of that stage, so a mismatch points at the stage that is wrong.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import longvid
from longvid.cli import main
from longvid.llm.qwen2 import apply_rope, rope_cos_sin
from longvid.video import open_video

PLACEHOLDER, VST = 1000, 1001  # the reference's ids after its vocab resize, used by the step tables
OVERRIDES = {"mixed": None, "r2": [2], "r4": [4]}


def close(actual, expected, atol, rtol=0.0):
    actual = actual.detach().float().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
    np.testing.assert_allclose(actual, expected, atol=atol, rtol=rtol)


@pytest.fixture(scope="module")
def fx(vxl_fixture):
    d = vxl_fixture
    return {
        "dir": d,
        "E": np.load(d / "expected" / "expected.npz"),
        "meta": json.loads((d / "expected" / "meta.json").read_text()),
        "prompts": json.loads((d / "inputs" / "prompts.json").read_text()),
        "frames": np.load(d / "inputs" / "frames.npy"),
    }


@pytest.fixture(scope="module")
def models(fx):
    ckpt = fx["dir"] / "checkpoint"
    return {tag: longvid.load(ckpt, overrides={"beacon_ratio": r} if r else None) for tag, r in OVERRIDES.items()}


def test_prompt_and_input_ids(models, fx):
    m = models["mixed"]
    plan = m.sampling_plan(open_video(fx["frames"], fps=1.0), max_frames=24)
    assert plan.indices == list(range(24))
    conv = m.conversation(fx["prompts"]["question"], plan)
    assert conv.render() == fx["prompts"]["prompt"]
    ids = m.prompt_ids(conv)
    assert ids == fx["E"]["input_ids"][0].tolist()
    assert ids.index(-200) == fx["prompts"]["beacon_skip_first"]
    assert ids.index(-200) + m.visual_token_count(plan) == fx["prompts"]["beacon_skip_last"]


def test_pixels_and_vision_stages(models, fx):
    m, E = models["mixed"], fx["E"]
    close(m.processor(fx["frames"]), E["pixel_values"], atol=1e-5)
    trace: dict = {}
    hooks = [
        m.model.vision_tower.register_forward_hook(lambda mod, args, out: trace.update(clip_features=out)),
        m.model.projector.register_forward_hook(lambda mod, args, out: trace.setdefault("projector_out", out)),
    ]
    with torch.no_grad():
        trace["pooled_features"] = m.model.encode_frames(torch.from_numpy(E["pixel_values"]))
        for hook in hooks:
            hook.remove()
        projected = m.model.projector(torch.from_numpy(E["clip_features"]))
    for name in ("clip_features", "projector_out", "pooled_features"):
        close(trace[name], E[name], atol=1e-5, rtol=1e-5)
    close(projected, E["projector_out"], atol=1e-5, rtol=1e-5)


def test_streamed_encode_matches_pooled_features(models, fx):
    m = models["mixed"]
    video = open_video(fx["frames"], fps=1.0)
    visual = m.encode_video(video, m.sampling_plan(video, max_frames=24))
    close(visual.tokens.reshape(24, 16, 64), fx["E"]["pooled_features"], atol=1e-5, rtol=1e-5)


def _prefill(m, fx):
    """The reference forward: prompt prefix, beacon windows, text suffix; every step's final-norm rows."""
    E = fx["E"]
    ids = E["input_ids"][0].tolist()
    cut = ids.index(-200)
    llm = m.model.llm
    visual = torch.from_numpy(E["pooled_features"]).reshape(1, -1, 64)
    plan = m.beacon_plan(visual.shape[1])
    cache, trace = m.new_cache(), []
    step = m.model._step  # record every step's final-norm rows (test instrumentation, not a production argument)
    m.model._step = lambda *args: trace.append(step(*args)) or trace[-1]
    try:
        with torch.no_grad():
            m.model.prefill_video(llm.embed(torch.tensor([ids[:cut]])), visual, cache, plan)
            m.model.extend_text(llm.embed(torch.tensor([ids[cut + 1 :]])), cache)
    finally:
        del m.model._step
    step_ids = [ids[:cut]]
    step_ids += [[VST if v else PLACEHOLDER for v in w.vst_mask().tolist()] for w in plan.windows]
    step_ids.append(ids[cut + 1 :])
    return plan, cache, trace, step_ids


def _unrotated(cache, head_dim, theta):
    """Our cache keys are post-RoPE at positions 0..M-1; the reference keeps them pre-RoPE."""
    keys, values = [], []
    for layer in range(cache.num_layers):
        k, v = cache.get(layer)
        cos, sin = rope_cos_sin(torch.arange(k.shape[2]), head_dim, theta, k.dtype)
        keys.append(apply_rope(k, cos, -sin)[0])
        values.append(v[0])
    return torch.stack(keys), torch.stack(values)


@pytest.mark.parametrize("tag", OVERRIDES)
def test_forward_steps_logits_and_memory(models, fx, tag):
    m, E, run = models[tag], fx["E"], fx["meta"]["runs"][tag]
    plan, cache, trace, step_ids = _prefill(m, fx)
    assert plan.ratios == run["ratios_per_window"]
    np.testing.assert_array_equal(np.concatenate(step_ids), E[f"{tag}_step_input_ids"])
    np.testing.assert_array_equal(np.cumsum([0] + [len(s) for s in step_ids]), E[f"{tag}_step_offsets"])
    hidden = torch.cat([h[0] for h in trace])
    close(hidden, E[f"{tag}_step_hidden"], atol=5e-5)

    logits = m.model.llm.logits(trace[-1])[0]
    close(logits, E[f"{tag}_logits"][:, :1000], atol=1e-4, rtol=1e-4)
    resized = trace[-1][0] @ torch.from_numpy(E["resized_lm_head_row"])  # the release's extra random column
    close(torch.cat([logits, resized[:, None]], 1), E[f"{tag}_logits"], atol=1e-4, rtol=1e-4)

    size = run["memory_size_after_forward"]
    assert cache.lengths == [size["sink"] + size["beacon"] + size["raw"]] * 4
    keys, values = _unrotated(cache, m.config.llm.head_dim, m.config.llm.rope_theta)
    close(keys, E[f"{tag}_memory_key"], atol=5e-5)
    close(values, E[f"{tag}_memory_value"], atol=5e-5)


@pytest.mark.parametrize("tag", ["r2", "r4"])
def test_greedy_tokens_and_step_logits(models, fx, tag):
    m, E = models[tag], fx["E"]
    visual = longvid.VisualTokens(
        torch.from_numpy(E["pooled_features"]).reshape(-1, 64),
        m.sampling_plan(open_video(fx["frames"], fps=1.0), max_frames=24),
    )
    cache, steps, tokens = m.new_cache(), [], []
    with torch.no_grad():
        logits = m.prefill(E["input_ids"][0].tolist(), visual.tokens, cache)

        def step(token):
            return m.decode_step([token], cache)

        for _ in range(12):
            steps.append(logits)
            tokens.append(int(logits.argmax()))
            logits = step(tokens[-1])
    assert tokens == E[f"{tag}_greedy_tokens"].tolist()
    close(torch.stack(steps), E[f"{tag}_greedy_step_logits"][:, :1000], atol=1e-4, rtol=1e-4)
    size = fx["meta"]["generation"][tag]["memory_size_after_generate"]
    assert cache.lengths[0] == sum(size.values()) + 1  # + the 12th token, which the reference never fed
    answer = m.ask(visual, fx["prompts"]["question"], max_new_tokens=12, gen={"repetition_penalty": 1.0})
    assert answer.token_ids == E[f"{tag}_greedy_tokens"].tolist()


@pytest.mark.parametrize("ratio", [2, 4])
def test_cli_reproduces_greedy_generation(fx, ratio, capfd):
    code = main(
        [
            "ask",
            str(fx["dir"] / "inputs" / "frames.npy"),
            fx["prompts"]["question"],
            "--model",
            str(fx["dir"] / "checkpoint"),
            "--fps",
            "1",
            "--max-frames",
            "24",
            "--max-new-tokens",
            "12",
            "--set",
            f"beacon_ratio=[{ratio}]",
            "--gen",
            "do_sample=false",
            "--gen",
            "repetition_penalty=1.0",
            "--json",
        ]
    )
    out, err = capfd.readouterr()
    assert code == 0, err
    data = json.loads(out)
    assert data["token_ids"] == fx["meta"]["generation"][f"r{ratio}"]["tokens"]
    assert data["num_frames"] == 24 and data["num_visual_tokens"] == 384


def test_mixed_ratios_do_not_depend_on_earlier_requests(models, fx):
    """The release draws from one RNG per process; here every request starts from beacon_seed again."""
    m = models["mixed"]
    visual = longvid.VisualTokens(
        torch.from_numpy(fx["E"]["pooled_features"]).reshape(-1, 64),
        m.sampling_plan(open_video(fx["frames"], fps=1.0), max_frames=24),
    )
    first = m.ask(visual, fx["prompts"]["question"], max_new_tokens=4)
    assert m.ask(visual, fx["prompts"]["question"], max_new_tokens=4).token_ids == first.token_ids
    assert m.beacon_plan(384).ratios == fx["meta"]["runs"]["mixed"]["ratios_per_window"]
