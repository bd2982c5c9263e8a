"""VideoChat-Flash on vLLM's engine: an out-of-tree model plugin (`pip install longvid[vllm]`).

vLLM loads this package's `register` through the `vllm.general_plugins` entry point, in every process
it starts. After that, released checkpoints load as they are:

    from vllm import LLM
    llm = LLM(model="OpenGVLab/VideoChat-Flash-Qwen2-7B_res448")    # or `vllm serve PATH`

* `model`  -- the vLLM model: longvid's video tower + clip ToMe + projector, vLLM's Qwen2, and the
  multimodal processor that puts the visual rows where the official prompt puts `<image>`
* `inputs` -- vLLM prompts built with longvid's sampler and prompt code (frames, or precomputed
  `VisualTokens` so the encode can happen elsewhere)
* `server` -- `longvid serve --engine vllm`: the same OpenAI API on top of vLLM's async engine

Not supported inside vLLM: VideoChat-Flash's in-LLM token dropping (`mm_llm_compress: true`). vLLM's
paged KV cache holds every prompt row in every layer, so rows cannot be removed between layers; such
a config is refused at load time with the way out (`hf_overrides={"mm_llm_compress": False}` runs the
model without dropping, which changes its answers; longvid's own engine runs it as released).
"""

from __future__ import annotations

ARCHITECTURE = "VideoChatFlashQwenForCausalLM"  # the released config.json's `architectures`
MODEL_TYPE = "videochat_flash_qwen"


def register() -> None:
    """The `vllm.general_plugins` entry point: teach transformers the config and vLLM the architecture."""
    from transformers import AutoConfig
    from vllm import ModelRegistry

    from .hf_config import VideoChatFlashQwenConfig

    AutoConfig.register(MODEL_TYPE, VideoChatFlashQwenConfig, exist_ok=True)
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "longvid.vllm.model:VideoChatFlashForVLLM")
