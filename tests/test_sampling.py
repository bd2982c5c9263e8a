"""Sampling plans: the official VideoChat-Flash sampler against a reference, and the other named plans."""

from __future__ import annotations

import numpy as np
import pytest

from longvid.video.sampling import (
    SamplingPlan,
    fps_plan,
    linspace_plan,
    segment_middles,
    timestamps_plan,
    uniform_plan,
    videochat_flash_plan,
)


def reference(vlen, fps, max_frames, min_frames=64, local=8):
    """The official `get_frame_indices(sample='dynamic_fps1', ...)`, transcribed from its description."""
    if min_frames > vlen:
        min_frames = (vlen // local) * local
    duration = vlen / fps
    seg = int(duration // local)
    n = local * seg if seg else local
    if max_frames > 0:
        n = min(n, max_frames)
    n = max(min_frames, n)
    acc = min(n, vlen)
    edges = np.linspace(0, vlen, acc + 1).astype(int)
    idx = [(edges[i] + edges[i + 1] - 1) // 2 for i in range(acc)]
    return idx + [idx[-1]] * (n - len(idx))


CASES = [  # (frames, fps, max_frames)
    (16, 4.0, 512),
    (10, 25.0, 512),
    (5, 1.0, 512),
    (300, 30.0, 512),
    (5400, 30.0, 512),
    (15300, 30.0, 512),
    (100000, 29.97, 512),
    (100000, 29.97, 64),
    (100000, 29.97, 32),
    (7200, 24.0, 1000),
    (60, 1.0, 16),
    (1800, 30.0, 0),
    (63, 1.0, 512),
    (64, 1.0, 512),
    (65, 1.0, 512),
    (1, 30.0, 512),
    (9, 3.0, 8),
]


@pytest.mark.parametrize("frames,fps,max_frames", CASES)
def test_official_sampler_matches_reference(frames, fps, max_frames):
    plan = videochat_flash_plan(frames, fps, max_frames)
    assert plan.indices == [int(i) for i in reference(frames, fps, max_frames)]
    assert plan.duration == pytest.approx(frames / fps)


def test_official_sampler_examples():
    assert len(videochat_flash_plan(300, 30.0)) == 64  # 10 s -> the 64-frame floor
    assert len(videochat_flash_plan(180 * 30, 30.0)) == 176  # 3 min
    assert len(videochat_flash_plan(600 * 30, 30.0)) == 512  # >= 8.5 min -> cap
    assert len(videochat_flash_plan(600 * 30, 30.0, max_frames=32)) == 64  # the floor wins over the cap


def test_start_offset_and_timestamps():
    plan = uniform_plan(50, 10.0, 4, first_index=50)  # the last 5 s of a 10 s, 10 fps video
    assert plan.indices == [55, 68, 80, 93]
    assert plan.timestamps == [5.5, 6.8, 8.0, 9.3]


def test_fps_plan_covers_the_whole_video_when_thinned():
    plan = fps_plan(3600 * 30, 30.0, 1.0, max_frames=100)
    assert len(plan) == 100
    assert plan.indices[0] == 15 and plan.indices[-1] > 3590 * 30
    assert fps_plan(300, 30.0, 2.0).indices == [int(t * 30) for t in np.arange(0.25, 10.0, 0.5)]
    assert fps_plan(90, 30.0, 30.0).indices == list(range(90))  # at the source rate: every frame once
    assert fps_plan(90, 30.0, 1e9).indices == list(range(90))  # never more than the source has


def test_linspace_and_timestamps_plans():
    assert linspace_plan(24, 1.0, 24).indices == list(range(24))
    assert linspace_plan(100, 25.0, 5).indices == [0, 24, 49, 74, 99]
    assert timestamps_plan(300, 30.0, [0.0, 1.5, 9.99, 100.0]).indices == [0, 45, 299, 299]


def test_segment_middles_pads_short_videos():
    assert segment_middles(3, 8) == [0, 1, 2, 2, 2, 2, 2, 2]


def test_padding_to_clips():
    plan = SamplingPlan([0, 5, 9], 10.0, 1.0, 10).padded_to_multiple(4)
    assert plan.indices == [0, 5, 9, 9]
