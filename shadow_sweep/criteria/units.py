"""The per-example view every criterion reads: one layer's units, token by token.

A unit is an attention head (its d columns of the head context) or an FFN neuron (one
column of the neuron activation, k = 1). For one layer:
    a  [B, T, U, k]  activation;   g = dL/da  (same shape, None without backward);
    hg [B, T, U, k]  Hessian-gradient product H g w.r.t. a (grasp only);
    valid [B, T]     real tokens (padding excluded);
    targets [B, T]   the next token id at each position, -1 where none (epenas).
L is the sum over examples of each example's loss on its answer tokens, so every
example's gradients are its own and a padded batch scores like examples one by one.
"""

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class UnitTensors:
    a: torch.Tensor
    valid: torch.Tensor
    targets: torch.Tensor
    g: Optional[torch.Tensor] = None
    hg: Optional[torch.Tensor] = None

    @property
    def token_weights(self) -> torch.Tensor:
        """[B, T, 1, 1] 1.0 on real tokens, 0.0 on padding."""
        return self.valid[:, :, None, None].to(self.a.dtype)

    def blocks(self, size: int) -> "UnitTensors":
        """Neurons regrouped into blocks of `size` consecutive neurons, [B, T, I/size, size]."""
        if self.a.shape[-1] != 1:
            raise ValueError("only scalar units (neurons) can be regrouped into blocks")
        units = self.a.shape[2]
        if units % size:
            raise ValueError(f"criterion.neuron_block={size} must divide the {units} neurons of a layer")
        regroup = lambda x: None if x is None else x.reshape(*x.shape[:2], units // size, size)  # noqa: E731
        return UnitTensors(regroup(self.a), self.valid, self.targets, regroup(self.g), regroup(self.hg))
