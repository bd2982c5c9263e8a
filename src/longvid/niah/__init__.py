"""Needle-in-a-haystack for video: single- and multi-hop, pixel- and embedding-level."""

from .harness import NiahSettings, run_niah, summarize
from .placement import multi_hop_positions, single_hop_position

__all__ = ["NiahSettings", "run_niah", "summarize", "multi_hop_positions", "single_hop_position"]
