"""The shared part of selectors that choose ahead: scores of heads and neurons from an earlier
state, ranked into keep masks by the sparsity policy (`predictors.inference.MaskPredictor`).

per_token: every token's masks from that token's scores ([B, T, U] per layer); per_sequence: one
mask per row, from the scores at its chosen token ([B, U]). Under global ranking, decisions
taken one layer at a time need the per-layer budgets of the mean calibration scores, so those
selectors need a fit then (`needs`).
"""

from typing import Optional

import torch

from shadow_sweep.config import AppConfig, MaskUpdate, PredictorConfig
from shadow_sweep.models.adapters import ModelShape
from shadow_sweep.predictors.fit import FittedPredictor, network_predictions
from shadow_sweep.predictors.inference import MaskPredictor
from shadow_sweep.selectors.base import Block, Need, PointContext, Selector


class AheadSelector(Selector):
    def __init__(self, point: PointContext, blocks: tuple[Block, ...], fitted: Optional[FittedPredictor] = None):
        super().__init__(point, blocks, fitted)
        self.per_token = point.update == MaskUpdate.per_token
        self.predictor = MaskPredictor(fitted, point.policy, point.loaded.device, point.update,
                                       fixed=self.spec.fixed)

    @classmethod
    def needs(cls, cfg: AppConfig) -> frozenset:
        """A fit for a network or fixed scores, or for the budgets of global ranking one layer at
        a time (the same rule as `ranking_rule`)."""
        network = cls.spec.network
        layerwise = network is not None and network.layerwise
        budgets = cfg.sparsity.ranking.value == "global" and (layerwise or cfg.sparsity.update == MaskUpdate.per_token)
        return frozenset({Need.traces}) if network is not None or cls.spec.fixed or budgets else frozenset()

    @classmethod
    def quality_predictions(cls, fitted: FittedPredictor, targets: tuple, batch, cfg: PredictorConfig,
                            shape: ModelShape):
        """A network's predictions of the validation rows."""
        if fitted.net is None:
            return None
        return network_predictions(fitted, batch, cfg, shape)

    @property
    def ranking_rule(self) -> str:
        return self.predictor.rule

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, ...] per token, or at each row's chosen token [B, 1, ...] per sequence."""
        return x if self.per_token else self.point.inputs.at_chosen(x)

    def set_layer_scores(self, layer: int, heads: Optional[torch.Tensor], neurons: Optional[torch.Tensor]) -> None:
        """One layer's scores at `tokens(...)` -> that layer's masks of this selector's blocks."""
        heads, neurons = self.predictor.layer_masks(layer, heads, neurons)
        if not self.per_token:
            heads = None if heads is None else heads[:, 0]
            neurons = None if neurons is None else neurons[:, 0]
        self.set_layer(layer, heads, neurons)

    def set_flat_scores(self, layer: int, heads: Optional[torch.Tensor], neurons: Optional[torch.Tensor],
                        rows: torch.Size) -> None:
        """Scores of flattened tokens [B*T', U] (`rows` = (B, T')) -> `set_layer_scores`."""
        unflatten = lambda s: None if s is None else s.unflatten(0, rows)  # noqa: E731
        self.set_layer_scores(layer, unflatten(heads), unflatten(neurons))

    def predictor_bytes(self) -> int:
        """The network's weights this selector's blocks need (its trunk and their output columns)."""
        if self.fitted is None or self.fitted.net is None:
            return 0
        layout = self.fitted.layout
        shape = self.shape
        per_layer_outputs = (shape.num_heads * (Block.attention in self.blocks and layout.heads)
                             + shape.num_neurons * (Block.mlp in self.blocks and layout.neurons))
        outputs = per_layer_outputs * (shape.num_layers - 1 if layout.one_network else 1)
        return self.fitted.net.shape.bytes_for(outputs, self.fitted.net.weights[0].element_size())

