"""The plugin's classes as lmms-eval's registry sees them, through the entry point that `pip install -e .` wrote
into .venv-lmms (skipped where lmms-eval is not importable, i.e. outside `make test-lmms`)."""

from __future__ import annotations

import math

import pytest

lmms_registry = pytest.importorskip("lmms_eval.models.registry_v2")


def test_entry_point_registers_the_model():
    from longvid.eval.lmms_model import LongvidLMM

    registry = lmms_registry.ModelRegistryV2()
    failures = registry.load_entrypoint_manifests()  # 0.7.3 raises on a bad plugin, later versions list it
    assert not [f for f in failures or () if "longvid" in f.source]
    assert registry.get_model_class("longvid") is LongvidLMM


def test_generate_until_and_loglikelihood_match_the_pipeline(short_video):
    from lmms_eval.api.instance import Instance

    from longvid.assets import default_model_path
    from longvid.options import GenerationOptions, SamplingOptions

    cls = lmms_registry.ModelRegistryV2()
    cls.load_entrypoint_manifests()
    lm = cls.get_model_class("longvid").create_from_arg_string(f"pretrained={default_model_path()},max_frames=8")
    doc = {"video": str(short_video), "question": "What colour is the shape?"}
    lm.task_dict = {"toy": {"test": [doc]}}
    meta = {"task": "toy", "doc_id": 0, "repeats": 1}
    gen = Instance(
        "generate_until",
        (doc["question"], {"max_new_tokens": 8, "until": ["\n\n"]}, lambda d: [d["video"]], 0, "toy", "test"),
        0,
        meta,
    )
    [text] = lm.generate_until([gen])
    direct, _ = lm.pipeline.ask(
        str(short_video),
        doc["question"],
        SamplingOptions(max_frames=8),
        gen=GenerationOptions(max_new_tokens=8, do_sample=False),
    )
    assert text == direct.text.strip() and text
    ll = [
        Instance(
            "loglikelihood",
            (doc["question"], target, lambda d: [d["video"], {"start": 0.0, "end": 4.0}], 0, "toy", "test"),
            i,
            meta,
        )
        for i, target in enumerate([text, "zebra zebra"])
    ]
    # what lmms-eval's evaluator hands its scorer (0.7.x: through unwrap_generation_output)
    unwrap = getattr(__import__("lmms_eval.api.instance").api.instance, "unwrap_generation_output", lambda x: (x, None))
    (loss_greedy, is_greedy), (loss_other, other_greedy) = [unwrap(r)[0] for r in lm.loglikelihood(ll)]
    assert is_greedy and not other_greedy
    # lmms-eval's convention: the mean negative log-likelihood per target token (smaller = more likely)
    assert math.isfinite(loss_other) and 0 <= loss_greedy < loss_other
    prompt, visual, _ = lm.pipeline.visual(
        str(short_video), SamplingOptions(max_frames=8, start=0.0, end=4.0), question=doc["question"]
    )
    ids = lm.model.tokenizer.encode("zebra zebra", add_special_tokens=False)
    assert loss_other == pytest.approx(-lm.pipeline.continuation_logprob(prompt, visual, ids)[0] / len(ids), rel=1e-5)
