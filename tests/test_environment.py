"""The environment rules CI enforces: no torchvision / timm, and no hub access during tests."""

import importlib.util
import os


def test_no_torchvision_or_timm():
    assert importlib.util.find_spec("torchvision") is None, "torchvision is CUDA-only here and breaks transformers"
    assert importlib.util.find_spec("timm") is None, "timm pulls torchvision"


def test_hub_is_offline():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
