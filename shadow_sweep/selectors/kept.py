"""The units a one-token decode step keeps where they are chosen ahead: per layer the kept query
heads and neurons as ascending indices (the rows the decode step reads), None where the block
keeps every unit or is selected inside the step (at the gate or at an input)."""

from dataclasses import dataclass
from typing import Iterable, Optional

import torch

from shadow_sweep.models.masks import LinearInputMasks, Slot

Kept = Optional[torch.Tensor]


def kept_of(mask: torch.Tensor) -> torch.Tensor:
    """One token's mask [1, U] or [1, 1, U] -> the kept units, ascending [k]."""
    return mask.reshape(-1).nonzero().squeeze(1)


@dataclass
class KeptUnits:
    heads: list[Kept]
    neurons: list[Kept]

    @classmethod
    def every(cls, layers: int) -> "KeptUnits":
        return cls([None] * layers, [None] * layers)

    def set(self, layer: int, heads: Kept = None, neurons: Kept = None) -> None:
        """Layer `layer`'s kept heads and/or neurons (None leaves that block as it is)."""
        if heads is not None:
            self.heads[layer] = heads
        if neurons is not None:
            self.neurons[layer] = neurons

    def take(self, masks: LinearInputMasks, heads: bool, neurons: bool, layers: Optional[Iterable[int]] = None) -> None:
        """The masks a selector set (one token's, for the blocks it serves) at `layers` (default:
        every layer) as kept units."""
        for layer in range(len(self.heads)) if layers is None else layers:
            head_mask = masks.slots[Slot.head_context][layer] if heads else None
            neuron_mask = masks.slots[Slot.neuron_activation][layer] if neurons else None
            self.set(layer, None if head_mask is None else kept_of(head_mask),
                     None if neuron_mask is None else kept_of(neuron_mask))
