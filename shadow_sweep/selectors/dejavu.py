"""`dejavu` (Liu et al., ICML 2023): one network per layer l >= 1 on that layer's input hidden
state at the token predicts layer l's head and neuron scores; trained on the criterion's traces
(DejaVu's own: l2_norm)."""

from typing import Optional

import torch

from shadow_sweep.predictors.layouts import NetworkLayout
from shadow_sweep.selectors.ahead import AheadSelector
from shadow_sweep.selectors.base import ALL_UPDATES, Block, Point, Reads, SelectorSpec
from shadow_sweep.selectors.rules import StepNetwork


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

    def decode_reads(self) -> dict[Reads, range]:
        """None: per_token steps run its networks themselves (`step_networks`)."""
        return {}

    def step_networks(self) -> dict[Reads, list[Optional[StepNetwork]]]:
        """Each layer's network, run by the decode step right before that layer (or its MLP)."""
        if not self.per_token or self.fitted is None or self.fitted.net is None:
            return {}
        return {self.reads_at: [None] + [self.step_network(layer) for layer in range(1, self.shape.num_layers)]}

    def step_network(self, layer: int) -> StepNetwork:
        """Layer `layer`'s network and keep counts (the policy's per-layer counts or budgets)."""
        net = self.fitted.net
        layout = self.fitted.layout
        policy = self.point.policy
        budgets = self.predictor.budgets or (None, None)
        choose_heads = Block.attention in self.blocks and layout.heads
        choose_neurons = Block.mlp in self.blocks and layout.neurons
        group = layer - 1
        return StepNetwork(tuple(w[group].detach() for w in net.weights), tuple(b[group].detach() for b in net.biases),
                           tuple(net.activated), self.shape.num_heads * layout.heads,
                           self.shape.num_neurons * layout.neurons, policy.group,
                           policy.heads.layer_keep(layer, budgets[0]) if choose_heads else None,
                           policy.neurons.layer_keep(layer, budgets[1]) if choose_neurons else None)
