"""The vLLM plugin: greedy token ids from vLLM equal longvid's own (which equal the official code's)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import ENGINE_ARGS, MAX_TOKENS, QUESTIONS, longvid_ids, tiny_config
from longvid.vllm import ARCHITECTURE
from longvid.vllm.inputs import PromptBuilder


def greedy():
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)


def vllm_ids(llm, prompts) -> list[list[int]]:
    outputs = llm.generate(prompts, greedy(), use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


def strip_stop(ids: list[int], model) -> list[int]:
    """vLLM keeps the stop token in token_ids, longvid does not."""
    return ids[:-1] if ids and ids[-1] in model.stop_ids else ids


def test_plugin_registers_the_released_architecture(llm):
    from vllm import ModelRegistry

    assert ARCHITECTURE in ModelRegistry.get_supported_archs()
    assert llm.llm_engine.model_config.architectures == [ARCHITECTURE]


def test_video_greedy_ids_equal_longvid(llm, model, media):
    expected = longvid_ids(model, media / "clip.mp4", QUESTIONS[0], num_frames=8)
    req = PromptBuilder(model).request(media / "clip.mp4", QUESTIONS[0], {"num_frames": 8})
    assert req.visual_tokens == 16 * 8 and req.plan.indices == [2, 7, 12, 17, 22, 27, 32, 37]
    assert len(expected) == MAX_TOKENS
    assert strip_stop(vllm_ids(llm, [req.prompt])[0], model) == expected


def test_official_sampler_and_text_prompt_with_image_marker(llm, model, media):
    """No frame count: the official ~1 fps sampler (64-frame floor). The prompt goes in as text with
    `<image>` (what a chat template gives vLLM); the processor tokenises around it as the official code."""
    builder = PromptBuilder(model)
    req = builder.request(media / "long.mp4", QUESTIONS[1])
    assert len(req.plan) == 64 and req.visual_tokens == 1024
    text = model.conversation(QUESTIONS[1], req.plan).render()
    assert "<image>\nThe video lasts for 9.00 seconds, and 64 frames" in text
    prompt = {"prompt": text, "multi_modal_data": req.prompt["multi_modal_data"]}
    expected = longvid_ids(model, media / "long.mp4", QUESTIONS[1])
    assert strip_stop(vllm_ids(llm, [prompt])[0], model) == expected


def test_image_greedy_ids_equal_longvid(llm, model, media):
    expected = longvid_ids(model, media / "image.png", "What is shown in this picture?")
    req = PromptBuilder(model).request(media / "image.png", "What is shown in this picture?")
    assert req.modality == "image" and req.visual_tokens == 64
    assert strip_stop(vllm_ids(llm, [req.prompt])[0], model) == expected


def test_precomputed_visual_tokens_skip_the_tower(llm, model, media):
    """Rows encoded elsewhere (longvid's encode_video, as `longvid encode` stores them) go in as embeddings."""
    video = model.open(media / "clip.mp4")
    visual = model.encode_video(video, model.sampling_plan(video, num_frames=12))
    req = PromptBuilder(model).request(visual, QUESTIONS[2])
    assert req.prompt["multi_modal_data"]["video"][0].shape == (16 * 12, 128)
    expected = longvid_ids(model, visual, QUESTIONS[2])
    assert strip_stop(vllm_ids(llm, [req.prompt])[0], model) == expected


def test_concurrent_requests_batched_equal_one_at_a_time(llm, model, media):
    builder = PromptBuilder(model)
    reqs = [
        builder.request(media / "clip.mp4", QUESTIONS[0], {"num_frames": 8}),
        builder.request(media / "long.mp4", QUESTIONS[1], {"num_frames": 16}),
        builder.request(media / "image.png", QUESTIONS[2]),
        builder.request(media / "clip.mp4", QUESTIONS[3], {"num_frames": 4, "start": 1.0}),
        builder.request(media / "long.mp4", QUESTIONS[0], {"fps": 2.0}),
    ]
    one_by_one = [vllm_ids(llm, [r.prompt])[0] for r in reqs]
    batched = vllm_ids(llm, [r.prompt for r in reqs])  # one call: vLLM schedules them together
    assert batched == one_by_one
    assert len({tuple(ids) for ids in batched}) > 1  # different requests, different answers
    first = longvid_ids(model, media / "long.mp4", QUESTIONS[1], num_frames=16)
    assert strip_stop(batched[1], model) == first


def test_official_repetition_penalty_counts_generated_tokens_only(llm, model, media):
    """The released generation config's penalty, as the official code applies it (generated tokens only),
    through the plugin's logits processor: what `longvid serve --engine vllm` sends."""
    from vllm import SamplingParams

    from longvid.vllm.logits import KEY

    penalised = model.ask(
        media / "clip.mp4", QUESTIONS[0], max_new_tokens=24, num_frames=8, gen={"repetition_penalty": 2.0}
    ).token_ids
    plain = model.ask(media / "clip.mp4", QUESTIONS[0], max_new_tokens=24, num_frames=8, gen={"repetition_penalty": 1})
    assert penalised != plain  # the penalty changes this model's answer
    req = PromptBuilder(model).request(media / "clip.mp4", QUESTIONS[0], {"num_frames": 8})
    params = SamplingParams(temperature=0.0, max_tokens=24, extra_args={KEY: 2.0})
    out = llm.generate([req.prompt], params, use_tqdm=False)[0].outputs[0]
    assert strip_stop(list(out.token_ids), model) == penalised


def test_in_llm_token_dropping_is_refused_with_the_way_out(tmp_path):
    """vLLM's paged KV cache cannot drop rows between layers: such a config fails to load, saying why."""
    from longvid.tiny import make_checkpoint

    folder = make_checkpoint(tmp_path / "drop", tiny_config(mm_llm_compress=True))
    script = textwrap.dedent(
        f"""
        from vllm import LLM
        LLM(model={str(folder)!r}, dtype="float32", **{ENGINE_ARGS!r})
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert run.returncode != 0
    assert "mm_llm_compress=true (in-LLM visual token dropping) is not supported inside vLLM" in run.stderr
    assert "hf_overrides={'mm_llm_compress': False}" in run.stderr
