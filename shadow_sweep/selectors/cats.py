"""`cats` (Lee et al., CATS, 2024): compute the gate projection densely, keep the FFN neurons
whose |act(gate)| is above a threshold calibrated per layer so that the mean kept fraction on
the calibration tokens is 1 - level (`sparsity.rule=top_k`: exactly the top round((1 - level)
I) every token), then only the kept neurons' up and down rows. Neurons only: heads come from
`predictor.heads` (dense by default). Without a gate (OPT) the score is the neuron activation
itself, computed densely by fc1."""

from typing import Optional

import torch

from shadow_sweep.config import AppConfig, MaskUpdate, SelectionRule
from shadow_sweep.models.masks import Slot
from shadow_sweep.predictors.fit import FittedPredictor
from shadow_sweep.selectors.base import Block, Need, Point, PointContext, Reads, Selector, SelectorSpec
from shadow_sweep.selectors.rules import ChannelRule
from shadow_sweep.sparsity.topk import keep_count


class CatsSelector(Selector):
    spec = SelectorSpec(name="cats", blocks=(Block.mlp,), point=Point.gate, updates=(MaskUpdate.per_token,),
                        rules=(SelectionRule.threshold, SelectionRule.top_k), decode=True,
                        adds="the gate projection dense, then a comparison per neuron",
                        source="Lee et al., CATS: Contextually-Aware Thresholding for Sparsity (arXiv 2404.08763)")

    def __init__(self, point: PointContext, blocks: tuple[Block, ...], fitted: Optional[FittedPredictor] = None):
        super().__init__(point, blocks, fitted)
        self.first = point.policy.neurons.first_pooled_layer
        self.level = point.policy.neurons.level
        gates = point.loaded.adapter.gate_modules(point.loaded.model)
        self.activations = None if gates is None else [activation for _, activation in gates]
        self.rules = [self.channel_rule(layer) for layer in range(self.shape.num_layers)]

    @classmethod
    def needs(cls, cfg: AppConfig) -> frozenset:
        rule = cfg.sparsity.rule or cls.spec.rules[0]
        return frozenset({Need.statistics}) if rule == SelectionRule.threshold else frozenset()

    @property
    def ranking_rule(self) -> str:
        return self.rule.value

    def channel_rule(self, layer: int) -> Optional[ChannelRule]:
        """The rule on |act(gate)| keeping `level` of the layer's neurons (None: all kept)."""
        if self.level == 0.0 or layer < self.first:
            return None
        if self.rule == SelectionRule.threshold:
            return ChannelRule(threshold=self.point.statistics.threshold("gate", Slot.neuron_activation, layer,
                                                                         self.level))
        return ChannelRule(keep=keep_count(self.level, self.shape.num_neurons))

    @property
    def reads_at(self) -> Reads:
        return Reads.neuron_activation if self.activations is None else Reads.gate_output

    def reads(self) -> dict[Reads, range]:
        return {self.reads_at: range(self.first, self.shape.num_layers)} if self.level else {}

    def step_rules(self) -> dict[Reads, list[Optional[ChannelRule]]]:
        """The decode step applies the rule to act(gate) (OPT: the activation of fc1)."""
        return {Reads.gate_output: self.rules}

    def read(self, where: Reads, layer: int, x: torch.Tensor) -> None:
        self.set_slot(Slot.neuron_activation, layer, self.rules[layer].mask(self.score_input(layer, x)))

    def score_input(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """What the rule scores: act(gate) from the gate's output, or the activation itself."""
        return x if self.activations is None else self.activations[layer](x)
