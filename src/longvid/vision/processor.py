"""Pixel preprocessing without torchvision: uint8 RGB frames -> normalised float tensors.

`SquashProcessor` is what the UMT / InternVideo2 towers were trained with (PIL bicubic resize straight
to SxS, no crop, x/255, ImageNet mean/std). `ClipProcessor` matches transformers' CLIPImageProcessor
(shortest side to S with PIL bicubic, centre crop, CLIP mean/std) for Video-XL.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _to_uint8_rgb(frame: np.ndarray | Image.Image) -> np.ndarray:
    if isinstance(frame, Image.Image):
        frame = np.asarray(frame.convert("RGB"))
    if frame.ndim == 2:
        frame = np.repeat(frame[:, :, None], 3, axis=2)
    if frame.shape[-1] == 4:
        frame = frame[..., :3]
    return np.ascontiguousarray(frame, dtype=np.uint8)


def _normalise(resized: list[np.ndarray], mean, std) -> torch.Tensor:
    """uint8 HWC frames -> float32 CHW, with transformers' arithmetic (rescale in float64, then float32
    normalize), one frame at a time so a long batch never holds a float64 copy."""
    out = torch.empty(len(resized), 3, *resized[0].shape[:2], dtype=torch.float32)
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    for i, frame in enumerate(resized):
        x = (torch.as_tensor(np.asarray(frame, dtype=np.float64)) * (1 / 255)).float().permute(2, 0, 1)
        out[i] = (x - mean_t) / std_t
    return out


@dataclass
class SquashProcessor:
    """Resize each frame to size x size (aspect ratio not kept), as VideoChat-Flash's towers expect."""

    size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __call__(self, frames) -> torch.Tensor:
        """frames: uint8 [T, H, W, 3] array or list of arrays / PIL images -> float32 [T, 3, size, size]."""
        out = []
        for f in frames:
            img = Image.fromarray(_to_uint8_rgb(f))
            out.append(np.asarray(img.resize((self.size, self.size), resample=Image.BICUBIC)))
        return _normalise(out, self.mean, self.std)


@dataclass
class ClipProcessor:
    """CLIPImageProcessor semantics: shortest edge -> size (bicubic), centre crop size x size."""

    size: int
    crop: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __call__(self, frames) -> torch.Tensor:
        out = []
        for f in frames:
            arr = _to_uint8_rgb(f)
            h, w = arr.shape[:2]
            short, long_ = (h, w) if h <= w else (w, h)
            new_long = int(self.size * long_ / short)  # transformers' get_resize_output_image_size
            new_h, new_w = (self.size, new_long) if h <= w else (new_long, self.size)
            img = Image.fromarray(arr).resize((new_w, new_h), resample=Image.BICUBIC)
            top = (new_h - self.crop) // 2
            left = (new_w - self.crop) // 2
            out.append(np.asarray(img)[top : top + self.crop, left : left + self.crop])
        return _normalise(out, self.mean, self.std)
