"""`shadowllm` (Akhauri et al., EMNLP 2024): one network on the layer-0 head context at the
token predicts every later layer's head and neuron scores; trained on the criterion's traces.
per_token: one network call over all B x T tokens; each later layer's scores are one output
slice of its trunk, taken when that layer starts (never all layers at once). per_sequence: all
layers' masks at once from each row's chosen token."""

import torch

from shadow_sweep.predictors.layouts import NetworkLayout
from shadow_sweep.selectors.ahead import AheadSelector
from shadow_sweep.selectors.base import ALL_UPDATES, Block, Point, Reads, SelectorSpec
from shadow_sweep.selectors.kept import KeptUnits


class ShadowLLMSelector(AheadSelector):
    spec = SelectorSpec(name="shadowllm", blocks=(Block.attention, Block.mlp), point=Point.ahead,
                        updates=ALL_UPDATES, network=NetworkLayout(width_cap=2048, one_network=True,
                                                                   input_field="shadow_input"),
                        needs_dense_first_layer=True, decode=True,
                        adds="the predictor's weights, once per token after layer 0",
                        source="Akhauri et al., ShadowLLM, EMNLP 2024 (arXiv 2406.16635)")

    def reads(self) -> dict[Reads, range]:
        later = range(1, self.shape.num_layers) if self.per_token else range(0)
        return {Reads.head_context: range(1), Reads.layer_input: later}

    def read(self, where: Reads, layer: int, x: torch.Tensor) -> None:
        if where == Reads.head_context:  # layer 0's head context [B, T, H*d]
            self.point.network_calls += 1
            if not self.per_token:
                self.set_all(*self.predictor.all_layers(self.point.inputs.at_chosen(x)[:, 0]))
                return
            self.trunk = self.predictor.trunk(x.flatten(0, 1))  # [B*T, 1, r]
            self.rows = x.shape[:2]
            return
        self.set_flat_scores(layer, *self.predictor.layer_scores_from_trunk(self.trunk, layer), self.rows)

    def decode_reads(self) -> dict[Reads, range]:
        """One network call per token, after layer 0: every later layer's units at once."""
        return {Reads.head_context: range(1)}

    def decode_read(self, where: Reads, layer: int, x: torch.Tensor, chosen: KeptUnits, kernels=None) -> None:
        """Layer 0's head context of one token [1, H d] -> every later layer's kept units, straight
        from the decode kernels (its network as vector-matrix products, a C++ top-k)."""
        heads, neurons = self.predictor.all_layers_kept(x, kernels)
        for later in range(1, self.shape.num_layers):
            chosen.set(later, heads[later] if Block.attention in self.blocks else None,
                       neurons[later] if Block.mlp in self.blocks else None)
