"""Selections a decode step makes itself, inside its C++ layer (decode/kernels/decode_step.cpp),
described as data both measurement paths share.

`ChannelRule`: how a selection at the gate or at a linear's input keeps the entries of one
tensor; the accuracy path applies it as a mask (`mask`), the decode step as `Rule`, so that both
choose alike.

    score_i = |x_i| * scale_i        (scale: WINA's column norms; None: 1)
    keep i  iff score_i > threshold  (a calibrated threshold), or
            i among each token's `keep` highest scores (rule top_k)

`StepNetwork`: a learned selection ahead (DejaVu's network of one layer) that the step runs right
before the computation it saves.
"""

from dataclasses import dataclass
from typing import Optional

import torch

from shadow_sweep.predictors.targets import normalise_inputs
from shadow_sweep.sparsity.topk import expand_indices, top_k_indices, top_k_mask


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


@dataclass(frozen=True)
class StepNetwork:
    """A selection ahead that the decode step runs itself, right before the computation it saves
    (DejaVu's network of one layer), so that choosing costs no return to Python:

        scores = MLP(min-max(x))   x: one token's state [U] (the layer's input, or its MLP's)
        heads:   the first `heads` columns; summed per K/V group of `head_group` query heads,
                 the `head_keep` highest groups (or heads) kept, every query head of a kept group;
        neurons: the next `neurons` columns, the `neuron_keep` highest kept.
    A keep of None leaves that block unchosen. `kept` is the reference the C++ layer follows."""

    weights: tuple[torch.Tensor, ...]  # [in, out] per layer of the network
    biases: tuple[torch.Tensor, ...]  # [out]
    relu: tuple[bool, ...]
    heads: int  # head score columns (first)
    neurons: int  # neuron score columns (after them)
    head_group: int = 1
    head_keep: Optional[int] = None
    neuron_keep: Optional[int] = None

    def kept(self, x: torch.Tensor) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """One token's state x [U] -> kept query heads and neurons (ascending; None: not chosen)."""
        z = normalise_inputs(x.float().reshape(1, -1))
        for weight, bias, relu in zip(self.weights, self.biases, self.relu):
            z = z @ weight + bias
            z = torch.relu(z) if relu else z
        heads = neurons = None
        if self.head_keep is not None:
            scores = z[0, :self.heads].unflatten(-1, (-1, self.head_group)).sum(-1)
            heads = expand_indices(top_k_indices(scores, self.head_keep), self.head_group)
        if self.neuron_keep is not None:
            neurons = top_k_indices(z[0, self.heads:self.heads + self.neurons], self.neuron_keep)
        return heads, neurons
