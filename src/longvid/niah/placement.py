"""Where needles go: the official formulas, in haystack frame indices.

A needle "at position p" is inserted before haystack frame p (so p = 0 is the very start and
p = F the very end of an F-frame haystack).
"""

from __future__ import annotations


def single_hop_position(frames: int, depth: float) -> int:
    """VideoChat-Flash single-hop: haystack[:int(d*F)] + needle + haystack[int(d*F):F]."""
    return int(depth * frames)


def multi_hop_positions(frames: int, needles: int) -> list[int]:
    """VideoChat-Flash multi-hop: needle 0 first, then for i >= 1 the haystack segment
    [int((i-1)*F/(K-1)) : int(i*F/(K-1))] followed by needle i (so needles sit at both ends, evenly spaced)."""
    if needles == 1:
        return [0]
    return [0] + [int(i * frames / (needles - 1)) for i in range(1, needles)]
