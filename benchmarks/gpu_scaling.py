"""A 7B-shaped VideoChat-Flash on one GPU at 1,000 / 5,000 / 10,000 frames (issue 14, item 4).

    python benchmarks/gpu_scaling.py                               # CUDA, bf16, Qwen2-7B + UMT-L 448 sizes
    python benchmarks/gpu_scaling.py --tiny --device cpu --frames 64 256   # the same code path, tiny, on the CPU

Random weights with the release's shapes (Qwen2-7B: hidden 3584, 28 layers, 28 heads / 4 KV heads, MLP 18944,
vocabulary 152,064; UMT-L at 448 px: 1024 wide, 24 layers, patch 16; ToMe to 16 tokens per frame), built
directly on the device: the numbers are the pipeline's cost, not answers. Frames are synthetic arrays (64
distinct 448 x 448 frames, cycled), so no video decoding is timed. For each frame count: time to first token
(encode + prefill + the first token), prefill time, peak GPU memory, and decoding speed over --new-tokens
tokens. Writes benchmarks/results/gpu_scaling.json (--tiny writes gpu_scaling_tiny.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
QUESTION = "What happens in the video?"
LONG_CONTEXT = 1 << 20
SEVEN_B = dict(
    vocab_size=152064,
    hidden=3584,
    layers=28,
    heads=28,
    kv_heads=4,
    intermediate=18944,
    vision_dim=1024,
    drop_parity_tower=True,
)  # no parity_vision_tower: the release's UMT-L 448
TINY = dict(
    vocab_size=1000,
    hidden=64,
    layers=4,
    heads=4,
    kv_heads=2,
    intermediate=128,
    vision_dim=64,
    image_size=448,
    patch=16,
    vision_depth=2,
    vision_heads=4,
)


def config(tiny: bool) -> dict:
    from longvid.tiny import tiny_videochat_flash_config

    sizes = dict(TINY if tiny else SEVEN_B)
    vocab = sizes.pop("vocab_size")
    drop = sizes.pop("drop_parity_tower", False)
    cfg = tiny_videochat_flash_config(
        vocab,
        max_position_embeddings=LONG_CONTEXT,
        tokenizer_model_max_length=LONG_CONTEXT,
        torch_dtype="bfloat16",
        **sizes,
    )
    if drop:
        cfg.pop("parity_vision_tower")
    return cfg


def build_model(folder: Path, cfg: dict, device: str, dtype: str):
    """The public model object, its weights random and created on `device` (no 15 GB checkpoint is written)."""
    import torch

    import longvid
    from longvid.models import build, to_dtype
    from longvid.tiny import generation_config, train_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "generation_config.json").write_text(json.dumps(generation_config(cfg["vocab_size"])))
    train_tokenizer(folder, 1000)
    m = longvid.load(folder, dtype=dtype, weights=False)  # the wrapper (tokenizer, prompts, plans), on meta
    torch.manual_seed(0)
    with torch.device(device):
        _, _, module = build(cfg)
    for p in module.parameters():  # small weights keep bf16 activations finite through 28 random layers
        if p.ndim >= 2:
            torch.nn.init.normal_(p, std=0.02)
    m.model = module.to(to_dtype(dtype)).eval()
    return m


def synthetic_video(size: int = 448, distinct: int = 64):
    from longvid.video import open_video

    rng = np.random.default_rng(0)
    return open_video(rng.integers(0, 256, (distinct, size, size, 3), dtype=np.uint8), fps=1.0)


def measure(m, video, frames: int, new_tokens: int, device: str) -> dict:
    import torch

    from longvid.video import SamplingPlan

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    plan = SamplingPlan([i % video.num_frames for i in range(frames)], 1.0, float(frames), frames, "cycled")
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        sync()
        start = time.perf_counter()
        visual = m.encode_video(video, plan).tokens
        sync()
        encoded = time.perf_counter()
        ids = m.prompt_ids(m.conversation(QUESTION, plan))
        cache = m.new_cache()
        cache.reserve(new_tokens)
        logits = m.prefill(ids, visual, cache)
        token = int(logits.argmax())
        sync()
        first = time.perf_counter()
        for _ in range(new_tokens):
            token = int(m.decode_step([token], cache).argmax())
        sync()
        end = time.perf_counter()
    n_visual = int(visual.shape[0])
    out = {
        "frames": frames,
        "visual_tokens": n_visual,
        "prompt_tokens": len(ids) - 1 + n_visual,
        "encode_s": encoded - start,
        "prefill_s": first - encoded,
        "ttft_s": first - start,
        "tokens_per_s": new_tokens / (end - first),
    }
    if device.startswith("cuda"):
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del cache, visual
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[1000, 5000, 10_000])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated to measure decoding speed")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (checks the code path on any machine)")
    args = parser.parse_args()

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "error: no CUDA device here; this benchmark needs a GPU (or check the code path with --tiny --device cpu)",
            file=sys.stderr,
        )
        return 2
    cfg = config(args.tiny)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        m = build_model(Path(tmp) / "model", cfg, args.device, args.dtype)
        built = time.perf_counter() - start
    params = sum(p.numel() for p in m.model.parameters())
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    total_gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if args.device.startswith("cuda") else None
    print(
        f"{'tiny' if args.tiny else '7B-shaped'} VideoChat-Flash, {params / 1e9:.2f} B parameters, {args.dtype}, "
        f"on {device_name} (built in {built:.0f} s)"
    )
    video = synthetic_video(m.config.vision.image_size)
    header = f"{'frames':>7} {'visual':>8} {'encode s':>9} {'prefill s':>9} {'TTFT s':>8} {'tok/s':>7} {'peak GiB':>9}"
    print(header + "\n" + "-" * len(header), flush=True)
    rows = []
    for frames in args.frames:
        try:
            r = measure(m, video, frames, args.new_tokens, args.device)
        except torch.OutOfMemoryError as e:
            r = {"frames": frames, "error": f"out of memory ({str(e).splitlines()[0][:120]})"}
            torch.cuda.empty_cache()
        rows.append(r)
        if "error" in r:
            print(f"{frames:>7,} {r['error']}", flush=True)
            continue
        print(
            f"{frames:>7,} {r['visual_tokens']:>8,} {r['encode_s']:>9.1f} {r['prefill_s']:>9.1f} {r['ttft_s']:>8.1f} "
            f"{r['tokens_per_s']:>7.1f} {r.get('peak_gpu_gib', float('nan')):>9.1f}",
            flush=True,
        )
    fits_80 = [r["frames"] for r in rows if "peak_gpu_gib" in r and r["peak_gpu_gib"] <= 80]
    result = {
        "model": "tiny" if args.tiny else "7B-shaped (Qwen2-7B + UMT-L 448)",
        "parameters": params,
        "dtype": args.dtype,
        "device": device_name,
        "device_memory_gib": total_gib,
        "new_tokens": args.new_tokens,
        "torch": torch.__version__,
        "rows": rows,
        "fits_in_80_gib": fits_80 if args.device.startswith("cuda") else None,
        "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("gpu_scaling_tiny.json" if args.tiny else "gpu_scaling.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
