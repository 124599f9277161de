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
from shadow_sweep.selectors.rules import ChannelRule
from shadow_sweep.sparsity.topk import keep_count


class TealSelector(Selector):
    spec = SelectorSpec(name="teal", blocks=(Block.attention, Block.mlp), point=Point.input,
                        updates=(MaskUpdate.per_token,), rules=(SelectionRule.threshold, SelectionRule.top_k),
                        decode=True,
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
        self.rules = {slot: [self.channel_rule(slot, layer, float(levels[layer])) for layer in range(layers)]
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

    def scale(self, slot: Slot, layer: int) -> Optional[torch.Tensor]:
        """The factor of |x_i| in an entry's score (None: 1)."""
        return None

    def channel_rule(self, slot: Slot, layer: int, level: float) -> Optional[ChannelRule]:
        """The rule keeping `level` of the slot's entries at `layer`: its calibrated threshold (rule
        threshold) or each token's top round((1 - level) U); None where nothing is selected."""
        if level == 0.0 or layer < self.first:
            return None
        scale = self.scale(slot, layer)
        if self.rule == SelectionRule.threshold:
            return ChannelRule(threshold=self.point.statistics.threshold(self.score, slot, layer, level), scale=scale)
        return ChannelRule(keep=keep_count(level, self.point.masks.width(slot)), scale=scale)

    def step_rules(self) -> dict[Reads, list[Optional[ChannelRule]]]:
        return {Reads(slot.value): rules for slot, rules in self.rules.items()}

    def read(self, where: Reads, layer: int, x: torch.Tensor) -> None:
        slot = Slot(where.value)
        rule = self.rules[slot][layer]
        if rule is not None:
            self.set_slot(slot, layer, rule.mask(x))
