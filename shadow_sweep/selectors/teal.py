"""`teal` (Liu et al., TEAL, ICLR 2025): at the input of every linear, keep the entries with
|x_i| above a threshold calibrated per layer and input so that the input's mean kept fraction
on the calibration tokens is 1 - level (TEAL's rule; `sparsity.rule=top_k`: exactly the top
round((1 - level) U) entries of every token instead). The four inputs of a layer are selected
apart: q/k/v's input (one mask for the three, the block a decode kernel reads), the head
context (o's input, channel by channel), gate/up's input, the neuron activation (down's input).
A skipped entry skips that column of every linear reading it. The attention block's level is
`sparsity.head_level` (else `level`), the MLP's `neuron_level`; `sparsity.allocation=greedy`
spreads them over the four inputs by TEAL's greedy search (selectors/allocation.py)."""

from typing import Optional

import torch

from shadow_sweep.config import AppConfig, Allocation, MaskUpdate, SelectionRule
from shadow_sweep.models.masks import Slot
from shadow_sweep.predictors.fit import FittedPredictor
from shadow_sweep.selectors.base import BLOCK_SLOTS, Block, Need, Point, PointContext, Reads, Selector, SelectorSpec
from shadow_sweep.sparsity.topk import keep_count, top_k_mask


class TealSelector(Selector):
    spec = SelectorSpec(name="teal", blocks=(Block.attention, Block.mlp), point=Point.input,
                        updates=(MaskUpdate.per_token,), rules=(SelectionRule.threshold, SelectionRule.top_k),
                        adds="a comparison per entry of every linear's input (a top-k with rule=top_k)",
                        source="Liu et al., Training-Free Activation Sparsity in LLMs (TEAL), ICLR 2025")
    score = "magnitude"  # the calibration statistics' score this selector thresholds

    def __init__(self, point: PointContext, blocks: tuple[Block, ...], fitted: Optional[FittedPredictor] = None):
        super().__init__(point, blocks, fitted)
        policy = point.policy
        self.first = policy.heads.first_pooled_layer
        block_level = {Block.attention: policy.heads.level, Block.mlp: policy.neurons.level}
        layers = self.shape.num_layers
        allocated = point.levels.get(self.spec.name, {})  # Slot -> [L], from an allocation
        self.levels = {slot: allocated.get(slot, torch.full((layers,), block_level[block]))
                       for block in blocks for slot in BLOCK_SLOTS[block]}
        self.thresholds = {slot: [self.threshold(slot, layer, float(levels[layer])) for layer in range(layers)]
                           for slot, levels in self.levels.items()}

    @classmethod
    def needs(cls, cfg: AppConfig) -> frozenset:
        rule = cfg.sparsity.rule or cls.spec.rules[0]
        calibrated = rule == SelectionRule.threshold or cfg.sparsity.allocation == Allocation.greedy
        return frozenset({Need.statistics}) if calibrated else frozenset()

    @classmethod
    def allocates(cls, cfg: AppConfig) -> bool:
        return cfg.sparsity.allocation == Allocation.greedy

    @property
    def ranking_rule(self) -> str:
        return f"{self.rule.value}_{self.point.policy.cfg.allocation.value}"

    def reads(self) -> dict[Reads, range]:
        return {Reads(slot.value): range(self.first, self.shape.num_layers) for slot in self.levels}

    def scores(self, slot: Slot, layer: int, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, U] -> the score of each entry, [B, T, U]."""
        return x.float().abs()

    def threshold(self, slot: Slot, layer: int, level: float) -> Optional[float]:
        """The calibrated threshold of `level` (None under rule top_k)."""
        if self.rule != SelectionRule.threshold:
            return None
        return self.point.statistics.threshold(self.score, slot, layer, level)

    def mask(self, slot: Slot, layer: int, x: torch.Tensor, level: float, threshold: Optional[float]) -> torch.Tensor:
        """The keep mask [B, T, U] of input x [B, T, U] at `level` (its `threshold` under rule
        threshold, else each token's top round((1 - level) U))."""
        scores = self.scores(slot, layer, x)
        if threshold is not None:
            return (scores > threshold).float()
        return top_k_mask(scores, keep_count(level, scores.shape[-1]))

    def read(self, where: Reads, layer: int, x: torch.Tensor) -> None:
        slot = Slot(where.value)
        level = float(self.levels[slot][layer])
        if level > 0.0:
            self.set_slot(slot, layer, self.mask(slot, layer, x, level, self.thresholds[slot][layer]))
