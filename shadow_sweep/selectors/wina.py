"""`wina` (Chen et al., WINA, 2025): TEAL's selection with the score |x_i| ||W[:, i]||_2, W the
weights that read the input stacked (q/k/v together, gate/up together): an entry that feeds
large weights counts more. Thresholds calibrated per layer and input as TEAL's."""

from typing import Optional

import torch

from shadow_sweep.config import MaskUpdate, SelectionRule
from shadow_sweep.models.masks import Slot
from shadow_sweep.predictors.fit import FittedPredictor
from shadow_sweep.selectors.base import Block, Point, PointContext, SelectorSpec
from shadow_sweep.selectors.statistics import column_norms
from shadow_sweep.selectors.teal import TealSelector


class WinaSelector(TealSelector):
    spec = SelectorSpec(name="wina", blocks=(Block.attention, Block.mlp), point=Point.input,
                        updates=(MaskUpdate.per_token,), rules=(SelectionRule.threshold, SelectionRule.top_k),
                        decode=True,
                        adds="a product and a comparison per entry of every linear's input",
                        source="Chen et al., WINA: Weight Informed Neuron Activation (arXiv 2505.19427)")
    score = "weighted"

    def __init__(self, point: PointContext, blocks: tuple[Block, ...], fitted: Optional[FittedPredictor] = None):
        norms = point.statistics.norms if point.statistics is not None else column_norms(point.loaded)
        self.norms = {slot: n.to(point.loaded.device).float().contiguous() for slot, n in norms.items()}
        super().__init__(point, blocks, fitted)

    def scale(self, slot: Slot, layer: int) -> Optional[torch.Tensor]:
        return self.norms[slot][layer]
