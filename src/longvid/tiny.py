"""Tiny random checkpoints in the released format, for tests, demos and training from scratch.

No model hub is needed: the tokenizer is a small byte-level BPE trained here in well under a second
(Qwen2's split pattern, ChatML special tokens), and the weights are random.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .checkpoint import save_checkpoint

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
CORPUS = """You are a helpful assistant. The video lasts for 12.00 seconds, and 64 frames are uniformly sampled from it.
What shape moves across the frames, and what color is it? What is shown in this picture? Describe the video.
Find the frame of a red circle. Which color is the needle? Which shape appears in the video? Answer with the letter.
Options: (A) red (B) green (C) blue (D) yellow. (A) circle (B) square (C) triangle (D) star. Best option: (A)
Only give the best option. The answer is A. The answer is B. The answer is C. The answer is D. Yes. No.
A red square, a green triangle, a blue circle, a yellow star, a white cross, a purple ring and an orange bar.
Locate the final frame based on the instructions in the image. The needle says: find the frame of a cat.
There is a person, a dog, a car, a tree, a house, a ball, a boat and a bird. It moves from left to right.
0 1 2 3 4 5 6 7 8 9 first second third last before after top bottom left right center frame video image
"""


def train_tokenizer(
    folder: Path, vocab_size: int = 512, corpus: list[str] | None = None, added: list[str] | None = None
) -> None:
    """Write tokenizer.json + tokenizer_config.json for a byte-level BPE with the ChatML specials,
    trained on `corpus` lines (default: a few generic sentences), plus `added` whole-string tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS) - len(added or []),
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    lines = corpus if corpus is not None else CORPUS.splitlines() * 4
    tok.train_from_iterator(lines, trainer)
    if added:
        from tokenizers import AddedToken

        tok.add_tokens([AddedToken(t, normalized=False) for t in added])
    tok.add_special_tokens(SPECIAL_TOKENS)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "bos_token": None,
                "unk_token": None,
                "model_max_length": 32768,
                "clean_up_tokenization_spaces": False,
                "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
            },
            indent=2,
        )
    )


def tiny_videochat_flash_config(
    vocab_size: int,
    hidden: int = 64,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    tower: str = "umt-hd-large",
    image_size: int = 64,
    patch: int = 8,
    vision_dim: int = 64,
    vision_depth: int = 3,
    vision_heads: int = 4,
    frames_per_clip: int = 4,
    **extra: Any,
) -> dict[str, Any]:
    """A config.json with the released VideoChat-Flash keys at tiny sizes (tower sizes in parity_vision_tower)."""
    specials = {t: vocab_size - len(SPECIAL_TOKENS) + i for i, t in enumerate(SPECIAL_TOKENS)}
    cfg = {
        "architectures": ["VideoChatFlashQwenForCausalLM"],
        "model_type": "videochat_flash_qwen",
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 32768,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "bos_token_id": specials["<|endoftext|>"],
        "eos_token_id": specials["<|im_end|>"],
        "mm_vision_tower": tower,
        "mm_vision_select_layer": -2,
        "mm_hidden_size": vision_dim,
        "mm_projector_type": "tome16_mlp_hd64",
        "mm_local_num_frames": frames_per_clip,
        "mm_pos_num_frames": 8,
        "mm_newline_position": "nothing",
        "mm_patch_merge_type": "spatial_nopad",
        "vision_encode_type": "video_image",
        "frame_aspect_ratio": "square",
        "image_aspect_ratio": "anyres_nopad",
        "mm_llm_compress": False,
        "llm_compress_type": "attention",
        "llm_compress_layer_list": [max(1, layers // 2)],
        "llm_image_token_ratio_list": [1.0, 0.5],
        "tokenizer_model_max_length": 32768,
        "tokenizer_padding_side": "right",
        "parity_vision_tower": {
            "image_size": image_size,
            "patch_size": patch,
            "embed_dim": vision_dim,
            "depth": vision_depth,
            "num_heads": vision_heads,
            "mlp_ratio": 4.0,
            "tubelet_size": 1,
            "ckpt_num_frame": 4,
        },
    }
    cfg.update(extra)
    return cfg


def tiny_video_xl_config(
    vocab_size: int = 512,
    hidden: int = 64,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    image_size: int = 112,
    patch: int = 14,
    vision_dim: int = 48,
    vision_layers: int = 3,
    vision_heads: int = 4,
    window: int = 80,
    ratios: list[int] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A config.json with every key of the released Video-XL config, at tiny sizes (tower in parity_vision_tower)."""
    specials = vocab_size - 3  # <|endoftext|>, <|im_start|>, <|im_end|> (the tokenizer above)
    cfg = {
        "architectures": ["LlavaQwenForCausalLM"],
        "model_type": "llava_qwen",
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_window_layers": layers,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "max_position_embeddings": 32768,
        "sliding_window": 131072,
        "use_sliding_window": False,
        "tie_word_embeddings": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": "float32",
        "bos_token_id": specials,
        "eos_token_id": specials + 2,
        "beacon_window": window,
        "beacon_stride": window,
        "beacon_attn": "full-coverage",
        "beacon_attend_prev": True,
        "beacon_sink_size": 0,
        "beacon_ratio": ratios or [2, 4, 8],
        "beacon_ratio_mix": "step-random",
        "beacon_param": ["q", "k", "v"],
        "beacon_pos": "interleave",
        "beacon_parallel_window": 1,
        "beacon_embed_init": "eos",
        "beacon_accum": True,
        "enable_beacon": True,
        "mm_vision_tower": "clip-vit-large-patch14-336",
        "mm_vision_select_layer": -1,
        "mm_vision_select_feature": "patch",
        "mm_hidden_size": vision_dim,
        "mm_projector_type": "mlp2x_gelu",
        "mm_resampler_type": "spatial_pool",
        "mm_spatial_pool_mode": "average",
        "mm_spatial_pool_stride": 2,
        "mm_spatial_pool_out_channels": vision_dim,
        "mm_patch_merge_type": "unires",
        "image_aspect_ratio": "anyres",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "unfreeze_mm_vision_tower": True,
        "tokenizer_model_max_length": 32768,
        "tokenizer_padding_side": "right",
        "parity_vision_tower": {
            "hidden_size": vision_dim,
            "intermediate_size": 4 * vision_dim,
            "num_hidden_layers": vision_layers,
            "num_attention_heads": vision_heads,
            "image_size": image_size,
            "patch_size": patch,
            "num_channels": 3,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            "projection_dim": vision_dim,
        },
    }
    cfg.update(extra)
    return cfg


def make_tiny_video_xl(folder: str | Path, seed: int = 0, **config: Any) -> Path:
    """A random tiny Video-XL checkpoint in the released format (config.json, safetensors, tokenizer)."""
    return make_checkpoint(folder, tiny_video_xl_config(**config), seed=seed)


def generation_config(vocab_size: int) -> dict[str, Any]:
    end, im_end = vocab_size - 3, vocab_size - 1
    return {
        "bos_token_id": end,
        "eos_token_id": [im_end, end],
        "pad_token_id": end,
        "do_sample": True,
        "repetition_penalty": 1.05,
        "temperature": 0.7,
        "top_k": 20,
        "top_p": 0.8,
    }


def make_checkpoint(
    folder: str | Path,
    config: dict[str, Any],
    seed: int = 0,
    vocab_size: int | None = None,
    corpus: list[str] | None = None,
    added: list[str] | None = None,
) -> Path:
    """Write a random checkpoint for `config` (with a tokenizer freshly trained on `corpus`) to `folder`."""
    from .models import build, release_state

    folder = Path(folder)
    torch.manual_seed(seed)
    _, _, module = build(config)
    save_checkpoint(folder, config, release_state(module))
    train_tokenizer(folder, vocab_size or config["vocab_size"], corpus, added)
    (folder / "generation_config.json").write_text(json.dumps(generation_config(config["vocab_size"]), indent=2))
    return folder
