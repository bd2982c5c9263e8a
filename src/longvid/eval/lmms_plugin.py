"""Registration of longvid as an lmms-eval model, through the `lmms_eval.models` entry-point group:

    pip install 'longvid[lmms-eval]'
    lmms-eval --model longvid --model_args pretrained=PATH,max_frames=512 --tasks videomme

lmms-eval (0.7.x) loads each entry point and accepts a `ModelManifest` (lmms_eval/models/registry_v2.py,
`load_entrypoint_manifests`). Nothing here imports lmms-eval until lmms-eval itself asks.
"""

from __future__ import annotations


def manifest():
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="longvid", simple_class_path="longvid.eval.lmms_model.LongvidLMM")
