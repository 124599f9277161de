"""What a predictor costs per token, against the model's own multiply-adds.

Model MACs per token = sum of in*out over its linear layers (attention score products and
norms left out: at short contexts they are a few percent). ShadowLLM's network runs once per
token, DejaVu's networks once per predicted layer.
"""

from torch import nn

from shadow_sweep.models.loading import LoadedModel
from shadow_sweep.predictors.fit import FittedPredictor


def model_macs_per_token(model: nn.Module) -> int:
    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))


def predictor_cost(fitted: FittedPredictor, loaded: LoadedModel) -> dict:
    model_macs = model_macs_per_token(loaded.model)
    if fitted.net is None:
        return {"predictor_parameters": 0, "predictor_macs_per_token": 0, "model_macs_per_token": model_macs,
                "predictor_macs_percent_of_model": 0.0}
    shape = fitted.net.shape
    macs = shape.groups * shape.macs_per_group
    return {"predictor_parameters": shape.parameters, "predictor_macs_per_token": macs,
            "model_macs_per_token": model_macs, "predictor_macs_percent_of_model": 100.0 * macs / model_macs,
            "predictor_width": shape.width, "predictor_bottleneck": shape.bottleneck}
