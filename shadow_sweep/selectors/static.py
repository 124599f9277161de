"""`static`: the mean normalised calibration scores of the criterion: one mask for every input
(the floor a contextual selector must beat)."""

from shadow_sweep.config import PredictorConfig
from shadow_sweep.models.adapters import ModelShape
from shadow_sweep.predictors.fit import FittedPredictor
from shadow_sweep.selectors.ahead import AheadSelector
from shadow_sweep.selectors.base import ALL_UPDATES, Block, ForwardInputs, Point, SelectorSpec


class StaticSelector(AheadSelector):
    spec = SelectorSpec(name="static", blocks=(Block.attention, Block.mlp), point=Point.ahead, updates=ALL_UPDATES,
                        fixed=True, decode=True, adds="nothing (fixed kept rows: a smaller dense model)",
                        source="the calibration mean of the criterion's scores")

    @classmethod
    def quality_predictions(cls, fitted: FittedPredictor, targets: tuple, batch, cfg: PredictorConfig,
                            shape: ModelShape):
        """The mean scores, the same for every row."""
        heads, neurons = targets
        return fitted.mean_head_scores[None, 1:].expand_as(heads), fitted.mean_neuron_scores[None, 1:].expand_as(neurons)

    def start(self, inputs: ForwardInputs) -> None:
        self.set_all(*self.predictor.static)
