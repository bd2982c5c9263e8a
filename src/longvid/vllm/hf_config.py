"""The released `videochat_flash_qwen` config.json as a transformers config, without remote code.

It is Qwen2's config plus the multimodal keys (`mm_vision_tower`, `mm_local_num_frames`, ...), which
transformers keeps as plain attributes; longvid's own reader (`VideoChatFlashConfig.from_dict`) reads
them back in the vLLM model.
"""

from __future__ import annotations

from transformers import Qwen2Config


class VideoChatFlashQwenConfig(Qwen2Config):
    model_type = "videochat_flash_qwen"
