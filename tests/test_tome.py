"""ToMe: official halving schedules, and merging equal to a slow loop-based reference."""

from __future__ import annotations

import pytest
import torch

from longvid.compress.tome import merge_schedule, tome_merge


@pytest.mark.parametrize(
    "tokens,target,expected",
    [
        (784, 64, [392, 196, 98, 34]),  # UMT @224, 4-frame clip
        (3136, 64, [1568, 784, 392, 196, 98, 34]),  # UMT @448 clip
        (1024, 64, [512, 256, 128, 64]),  # InternVideo2 clip
        (196, 64, [98, 34]),  # UMT @224 image
        (784, 64, [392, 196, 98, 34]),  # UMT @448 image
        (256, 64, [128, 64]),  # InternVideo2 image
        (400, 64, [200, 100, 36]),  # fixture A clip
        (1568, 128, [784, 392, 196, 68]),  # 8-frame clip @224
    ],
)
def test_merge_schedule(tokens, target, expected):
    assert merge_schedule(tokens, target) == expected
    assert tokens - sum(expected) == target


def reference_merge(x: torch.Tensor, target: int, heads: int) -> torch.Tensor:
    """Written from the algorithm's description, one sequence and one token at a time."""
    x = x.clone()
    size = torch.ones(x.shape[0])
    for r in merge_schedule(x.shape[0], target):
        metric = x.reshape(x.shape[0], heads, -1).mean(1)
        metric = metric / metric.norm(dim=-1, keepdim=True)
        a_idx, b_idx = list(range(0, x.shape[0], 2)), list(range(1, x.shape[0], 2))
        best = [
            (float((metric[i] * metric[b_idx]).sum(-1).max()), int((metric[i] * metric[b_idx]).sum(-1).argmax()))
            for i in a_idx
        ]
        order = sorted(range(len(a_idx)), key=lambda i: -best[i][0])
        merged_b = {j: (x[b_idx[j]] * size[b_idx[j]], float(size[b_idx[j]])) for j in range(len(b_idx))}
        for i in order[:r]:
            acc, s = merged_b[best[i][1]]
            merged_b[best[i][1]] = (acc + x[a_idx[i]] * size[a_idx[i]], s + float(size[a_idx[i]]))
        new_x = [x[a_idx[i]] for i in order[r:]] + [merged_b[j][0] / merged_b[j][1] for j in range(len(b_idx))]
        new_size = [size[a_idx[i]] for i in order[r:]] + [torch.tensor(merged_b[j][1]) for j in range(len(b_idx))]
        x, size = torch.stack(new_x), torch.stack(new_size)
    return x


@pytest.mark.parametrize("tokens,target,heads", [(400, 64, 4), (196, 64, 16), (288, 96, 8)])
def test_merge_matches_reference(tokens, target, heads):
    torch.manual_seed(tokens)
    x = torch.randn(2, tokens, 32, dtype=torch.float64)
    out = tome_merge(x, target, heads)
    assert out.shape == (2, target, 32)
    for b in range(2):
        torch.testing.assert_close(out[b], reference_merge(x[b], target, heads))


def test_merge_preserves_total_mass():
    torch.manual_seed(1)
    x = torch.randn(1, 100, 16, dtype=torch.float64)
    decisions = []
    out = tome_merge(x, 64, 4, decisions)
    # size-weighted averages: the sum over tokens weighted by how many they absorbed equals the input sum
    sizes = torch.ones(1, 100, 1, dtype=torch.float64)
    from longvid.compress.tome import _apply

    for d in decisions:
        sizes = _apply(sizes, d)
    torch.testing.assert_close((out * sizes).sum(1), x.sum(1))
