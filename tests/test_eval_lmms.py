"""The lmms-eval plugin against the real lmms-eval package (skipped where lmms-eval is not importable: it
pins torch / torchvision / av versions of its own, so it is not part of the main environment)."""

from __future__ import annotations

import math

import pytest

lmms_registry = pytest.importorskip("lmms_eval.models.registry_v2")


@pytest.fixture
def installed_entry_point(tmp_path, monkeypatch):
    """What `pip install longvid` writes for pyproject's [project.entry-points."lmms_eval.models"]."""
    info = tmp_path / "longvid_plugin_check-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: longvid-plugin-check\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text("[lmms_eval.models]\nlongvid = longvid.eval.lmms_plugin:manifest\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_entry_point_registers_the_model(installed_entry_point):
    from longvid.eval.lmms_model import LongvidLMM

    registry = lmms_registry.ModelRegistryV2()
    failures = registry.load_entrypoint_manifests()  # 0.7.3 raises on a bad plugin, later versions list it
    assert not [f for f in failures or () if "longvid" in f.source]
    assert registry.get_model_class("longvid") is LongvidLMM


def test_generate_until_and_loglikelihood_match_the_pipeline(installed_entry_point, short_video):
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
    (lp_greedy, is_greedy), (lp_other, other_greedy) = lm.loglikelihood(ll)
    assert is_greedy and not other_greedy
    assert math.isfinite(lp_greedy) and lp_other < lp_greedy <= 0
