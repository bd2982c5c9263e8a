"""The official repetition penalty inside vLLM: over the generated tokens only.

VideoChat-Flash's released generation config sets `repetition_penalty: 1.05`. The official code (and
longvid's engine) feeds the prompt as embeddings, so transformers' penalty sees only the tokens
generated so far; vLLM's own `repetition_penalty` also counts every prompt token. This logits processor
(vLLM's `vllm.logits_processors` entry point, loaded by every engine in the environment, idle unless a
request asks for it) applies transformers' arithmetic to the generated tokens, for requests that carry
`SamplingParams(extra_args={KEY: penalty})` -- what `longvid serve --engine vllm` sends.
"""

from __future__ import annotations

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

KEY = "longvid_repetition_penalty"


def penalise(penalty: float, generated: list[int], logits: torch.Tensor) -> torch.Tensor:
    """transformers' RepetitionPenaltyLogitsProcessor on one row, as longvid.generation.process_logits."""
    if not generated:
        return logits
    idx = torch.tensor(sorted(set(generated)), device=logits.device)
    picked = logits[idx]
    logits[idx] = torch.where(picked < 0, picked * penalty, picked / penalty)
    return logits


class GeneratedRepetitionPenalty(AdapterLogitsProcessor):
    def is_argmax_invariant(self) -> bool:
        return False  # it changes which token is most likely

    def new_req_logits_processor(self, params: SamplingParams):
        penalty = (params.extra_args or {}).get(KEY)
        if penalty is None or float(penalty) == 1.0:
            return None

        def apply(output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
            return penalise(float(penalty), output_ids, logits)

        return apply
