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
from shadow_sweep.sparsity.topk import keep_count, top_k_mask


class CatsSelector(Selector):
    spec = SelectorSpec(name="cats", blocks=(Block.mlp,), point=Point.gate, updates=(MaskUpdate.per_token,),
                        rules=(SelectionRule.threshold, SelectionRule.top_k),
                        adds="the gate projection dense, then a comparison per neuron",
                        source="Lee et al., CATS: Contextually-Aware Thresholding for Sparsity (arXiv 2404.08763)")

    def __init__(self, point: PointContext, blocks: tuple[Block, ...], fitted: Optional[FittedPredictor] = None):
        super().__init__(point, blocks, fitted)
        self.first = point.policy.neurons.first_pooled_layer
        self.level = point.policy.neurons.level
        gates = point.loaded.adapter.gate_modules(point.loaded.model)
        self.activations = None if gates is None else [activation for _, activation in gates]
        self.thresholds = None
        if self.rule == SelectionRule.threshold:
            self.thresholds = [point.statistics.threshold("gate", Slot.neuron_activation, layer, self.level)
                               for layer in range(self.shape.num_layers)]

    @classmethod
    def needs(cls, cfg: AppConfig) -> frozenset:
        rule = cfg.sparsity.rule or cls.spec.rules[0]
        return frozenset({Need.statistics}) if rule == SelectionRule.threshold else frozenset()

    @property
    def ranking_rule(self) -> str:
        return self.rule.value

    def reads(self) -> dict[Reads, range]:
        where = Reads.neuron_activation if self.activations is None else Reads.gate_output
        return {where: range(self.first, self.shape.num_layers)} if self.level else {}

    def read(self, where: Reads, layer: int, x: torch.Tensor) -> None:
        scores = (x if self.activations is None else self.activations[layer](x)).float().abs()
        if self.thresholds is not None:
            mask = (scores > self.thresholds[layer]).float()
        else:
            mask = top_k_mask(scores, keep_count(self.level, scores.shape[-1]))
        self.set_slot(Slot.neuron_activation, layer, mask)
