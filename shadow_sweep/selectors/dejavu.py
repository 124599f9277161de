"""`dejavu` (Liu et al., ICML 2023): one network per layer l >= 1 on that layer's input hidden
state at the token predicts layer l's head and neuron scores; trained on the criterion's traces
(DejaVu's own: l2_norm)."""

import torch

from shadow_sweep.predictors.layouts import NetworkLayout
from shadow_sweep.selectors.ahead import AheadSelector
from shadow_sweep.selectors.base import ALL_UPDATES, Block, Point, Reads, SelectorSpec


class DejaVuSelector(AheadSelector):
    spec = SelectorSpec(name="dejavu", blocks=(Block.attention, Block.mlp), point=Point.ahead, updates=ALL_UPDATES,
                        network=NetworkLayout(width_cap=1000, one_network=False, input_field="dejavu_input"),
                        needs_dense_first_layer=True, decode=True,
                        adds="one predictor network per layer, before the layer",
                        source="Liu et al., Deja Vu, ICML 2023")
    reads_at = Reads.layer_input

    def reads(self) -> dict[Reads, range]:
        return {self.reads_at: range(1, self.shape.num_layers)}

    def read(self, where: Reads, layer: int, x: torch.Tensor) -> None:
        self.point.network_calls += 1
        tokens = self.tokens(x)
        self.set_flat_scores(layer, *self.predictor.layer_network_scores(layer, tokens.flatten(0, 1)), tokens.shape[:2])
