"""How a selection at the gate or at a linear's input keeps the entries of one tensor: one rule
that both measurement paths apply, the accuracy path as a mask (`mask`) and the decode step
inside its C++ layer (decode/kernels/decode_step.cpp, `Rule`), so that both choose alike.

    score_i = |x_i| * scale_i        (scale: WINA's column norms; None: 1)
    keep i  iff score_i > threshold  (a calibrated threshold), or
            i among each token's `keep` highest scores (rule top_k)
"""

from dataclasses import dataclass
from typing import Optional

import torch

from shadow_sweep.sparsity.topk import top_k_mask


@dataclass(frozen=True)
class ChannelRule:
    threshold: Optional[float] = None  # None: top-k
    keep: Optional[int] = None  # each token's top `keep` (rule top_k)
    scale: Optional[torch.Tensor] = None  # [U]

    def __post_init__(self):
        if (self.threshold is None) == (self.keep is None):
            raise ValueError("a ChannelRule has either a threshold or a keep count")

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., U] -> scores [..., U] (float32)."""
        magnitude = x.float().abs()
        return magnitude if self.scale is None else magnitude * self.scale

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., U] -> the keep mask [..., U] (float 0/1)."""
        scores = self.scores(x)
        if self.keep is None:
            return (scores > self.threshold).float()
        return top_k_mask(scores, self.keep)
