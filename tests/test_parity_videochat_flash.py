"""Every output recorded from the official VideoChat-Flash code on fixture A, at the README's tolerances.

Integers (ids, ToMe decisions, kept rows, generated ids) must match exactly; float tensors within
atol/rtol 1e-4 (pixels 1e-5). Each stage is also fed the *reference* input, so a mismatch points at
the stage that is wrong.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import longvid
from longvid.video import SamplingPlan, open_video

COMPRESS = {
    "mm_llm_compress": True,
    "llm_compress_type": "uniform0_attention",
    "llm_compress_layer_list": [1, 2],
    "llm_image_token_ratio_list": [1, 0.75, 0.25],
}


def close(actual, expected, atol=1e-4, rtol=1e-4):
    actual = actual.detach().float().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
    np.testing.assert_allclose(actual, expected, atol=atol, rtol=rtol)


@pytest.fixture(scope="module")
def fx(vcf_fixture):
    return {
        "dir": vcf_fixture,
        "E": np.load(vcf_fixture / "expected" / "expected.npz"),
        "meta": json.loads((vcf_fixture / "expected" / "meta.json").read_text()),
        "prompts": json.loads((vcf_fixture / "inputs" / "prompts.json").read_text()),
        "frames": np.load(vcf_fixture / "inputs" / "frames.npy"),
    }


@pytest.fixture(scope="module")
def model(fx):
    return longvid.load(fx["dir"] / "checkpoint")


@pytest.fixture(scope="module")
def model_compress(fx):
    return longvid.load(fx["dir"] / "checkpoint", overrides=COMPRESS)


def test_prompt_and_input_ids(model, fx):
    video = open_video(fx["frames"], fps=fx["prompts"]["fps"])
    plan = model.sampling_plan(video)
    assert plan.indices == list(range(16))
    conv = model.conversation(fx["prompts"]["question"], plan)
    assert conv.render() == fx["prompts"]["video_prompt"]
    assert model.prompt_ids(conv) == fx["E"]["input_ids"][0].tolist()


def test_pixel_values(model, fx):
    close(model.processor(fx["frames"]), fx["E"]["pixel_values"], atol=1e-5, rtol=0)


def traced_encode(model, pixels: torch.Tensor, is_image: bool = False) -> tuple[torch.Tensor, dict]:
    """`encode_clips`, recording the tower's output and the MLP's input (ToMe's output) with forward hooks,
    and ToMe's merge decisions by running it again on the recorded tower output."""
    trace: dict = {}
    hooks = [
        model.model.vision_tower.register_forward_hook(lambda mod, args, out: trace.update(vision_tower_out=out)),
        model.model.projector.mlp.register_forward_pre_hook(lambda mod, args: trace.update(tome_merged=args[0])),
    ]
    try:
        with torch.no_grad():
            out = model.model.encode_clips(pixels, is_image=is_image)
            trace["tome"] = []
            model.model.projector.tome(trace["vision_tower_out"], pixels.shape[1], is_image, trace["tome"])
    finally:
        for hook in hooks:
            hook.remove()
    return out, trace


def test_tower_tome_projector_per_clip(model, fx):
    E = fx["E"]
    out, trace = traced_encode(model, torch.from_numpy(E["pixel_values"]).reshape(4, 4, 3, 160, 160))
    close(trace["vision_tower_out"], E["vision_tower_out"])
    assert len(trace["tome"]) == len([k for k in E.keys() if k.startswith("tome_step") and k.endswith("_unm_idx")]) > 0
    for step, decision in enumerate(trace["tome"]):
        for name in ("unm_idx", "src_idx", "dst_idx"):
            np.testing.assert_array_equal(getattr(decision, name).numpy(), E[f"tome_step{step}_{name}"])
    close(trace["tome_merged"], E["tome_merged"])
    close(out, E["projector_out"])


def test_projector_on_reference_tower_output(model, fx):
    E = fx["E"]
    with torch.no_grad():
        out = model.model.projector(torch.from_numpy(E["vision_tower_out"]), 4)
    close(out, E["projector_out"])


def test_inputs_embeds(model, fx):
    E = fx["E"]
    visual = torch.from_numpy(E["projector_out"]).flatten(0, 1)
    embeds, start = model.model.embed_prompt(E["input_ids"][0].tolist(), visual)
    assert start == 22
    close(embeds, E["inputs_embeds"])


@pytest.mark.parametrize("mode", ["nocompress", "compress"])
def test_logits_and_hidden_states(model, model_compress, fx, mode):
    E = fx["E"]
    m = model if mode == "nocompress" else model_compress
    kept: list = []
    with torch.no_grad():  # start from the reference inputs_embeds' visual rows
        out = m.model(
            E["input_ids"][0].tolist(),
            torch.from_numpy(E["projector_out"]).flatten(0, 1),
            kept_rows=kept,
            output_hidden_states=True,
        )
        logits = m.model.llm.logits(out.hidden)[0]
    close(logits, E[f"video_{mode}_logits"])
    for i in range(1, 5):
        close(out.hidden_states[i][0], E[f"video_{mode}_hidden_state_{i:02d}"])
    if mode == "compress":
        assert len(kept) == 2
        for stage, rows in enumerate(kept):
            np.testing.assert_array_equal(rows.numpy(), E[f"compress_stage{stage}_kept_rows"])


@pytest.mark.parametrize("mode", ["nocompress", "compress"])
def test_greedy_generation_and_step_logits(model, model_compress, fx, mode):
    E = fx["E"]
    m = model if mode == "nocompress" else model_compress
    visual = longvid.VisualTokens(
        torch.from_numpy(E["projector_out"]).flatten(0, 1), m.sampling_plan(open_video(fx["frames"], fps=4.0))
    )
    ids = E["input_ids"][0].tolist()
    cache = m.new_cache()
    steps = []
    with torch.no_grad():
        logits = m.prefill(ids, visual.tokens, cache)

        def step(token):
            return m.decode_step([token], cache)

        tokens = []
        for _ in range(12):
            steps.append(logits)
            tokens.append(int(logits.argmax()))
            logits = step(tokens[-1])
    assert tokens == fx["meta"]["generation"][f"greedy_{mode}"]
    close(torch.stack(steps), E[f"greedy_{mode}_step_logits"])
    answer = m.ask(visual, fx["prompts"]["question"], max_new_tokens=12, gen={"repetition_penalty": 1.0})
    assert answer.token_ids == fx["meta"]["generation"][f"greedy_{mode}"]


@pytest.mark.parametrize("mode", ["nocompress", "compress"])
def test_chat_from_frames(model, model_compress, fx, mode):
    """The official chat(): sampler, time message, checkpoint's repetition_penalty 1.05, greedy."""
    m = model if mode == "nocompress" else model_compress
    answer = m.ask(fx["frames"], fx["prompts"]["question"], input_fps=4.0, max_new_tokens=12)
    assert answer.token_ids == fx["meta"]["generation"][f"chat_{mode}"]
    assert answer.text == fx["meta"]["generation_text"][f"chat_{mode}"].strip()
    assert answer.num_frames == 16 and answer.num_visual_tokens == 256


def test_single_image_path(model, fx):
    E = fx["E"]
    image = np.load(fx["dir"] / "inputs" / "image.npy")
    pixels = model.processor([image])
    close(pixels, E["image_pixel_values"], atol=1e-5, rtol=0)
    out, trace = traced_encode(model, pixels[:, None], is_image=True)
    close(trace["vision_tower_out"], E["image_vision_tower_out"])
    for name in ("unm_idx", "src_idx", "dst_idx"):
        np.testing.assert_array_equal(getattr(trace["tome"][0], name).numpy(), E[f"image_tome_step0_{name}"])
    close(trace["tome_merged"], E["image_tome_merged"])
    close(out, E["image_projector_out"])
    ids = model.prompt_ids(model.conversation(fx["prompts"]["image_question"], SamplingPlan.image()))
    assert ids == E["image_input_ids"][0].tolist()
    embeds, _ = model.model.embed_prompt(ids, out[0])
    close(embeds, E["image_inputs_embeds"])
    with torch.no_grad():
        logits = model.model.llm.logits(model.model.llm(embeds).hidden)[0]
    close(logits, E["image_logits"])
    answer = model.ask(image, fx["prompts"]["image_question"], max_new_tokens=4)  # a [H, W, 3] array is an image
    assert answer.num_visual_tokens == 64 and answer.prompt_tokens == 106


def _cli_json(args):
    proc = subprocess.run([sys.executable, "-m", "longvid", "ask", *args, "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("mode", ["nocompress", "compress"])
def test_cli_ask_json_reproduces_chat(fx, mode):
    args = [
        str(fx["dir"] / "inputs" / "frames.npy"),
        fx["prompts"]["question"],
        "--model",
        str(fx["dir"] / "checkpoint"),
        "--fps",
        "4",
        "--max-new-tokens",
        "12",
    ]
    if mode == "compress":
        for key, value in COMPRESS.items():
            args += ["--set", f"{key}={json.dumps(value)}"]
    out = _cli_json(args)
    assert out["token_ids"] == fx["meta"]["generation"][f"chat_{mode}"]
    assert out["num_frames"] == 16 and out["num_visual_tokens"] == 256
