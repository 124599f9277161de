"""Building blocks of the selector tests: synthetic traces with a known relation, fits, the
calibration statistics of a tiny model and a runtime for any selection."""

from typing import Optional

import torch

from shadow_sweep.config import CriterionConfig, MaskUpdate, PredictorConfig, Ranking, SelectionRule, SparsityConfig
from shadow_sweep.criteria.registry import get_criterion
from shadow_sweep.data.calibration import EncodedExample
from shadow_sweep.models.adapters import ModelShape
from shadow_sweep.models.loading import LoadedModel
from shadow_sweep.predictors.fit import FittedPredictor, fit
from shadow_sweep.predictors.inference import MaskPredictor
from shadow_sweep.predictors.targets import normalise_inputs
from shadow_sweep.selectors.registry import selection_of, spec
from shadow_sweep.selectors.runtime import SelectionRuntime
from shadow_sweep.selectors.statistics import CalibrationStatistics, collect_statistics
from shadow_sweep.sparsity.policy import SparsityPolicy
from shadow_sweep.traces.collect import TraceBatch


def synthetic_traces(shape: ModelShape, n: int, seed: int = 0) -> TraceBatch:
    """Scores that are a fixed smooth function of the inputs: ShadowLLM's from the layer-0
    context, DejaVu's from each layer's input; a predictor must recover their rankings."""
    g = torch.Generator().manual_seed(seed)
    context = torch.rand(n, shape.num_heads * shape.head_dim, generator=g)
    hidden = torch.rand(n, shape.num_layers, shape.hidden_size, generator=g)
    mlp_input = torch.rand(n, shape.num_layers, shape.hidden_size, generator=g)
    mix_h = torch.randn(context.shape[1], shape.num_layers, shape.num_heads, generator=g)
    mix_n = torch.randn(context.shape[1], shape.num_layers, shape.num_neurons, generator=g)
    features = normalise_inputs(context)  # what the predictor sees
    heads = (0.2 * torch.einsum("nf,flu->nlu", features, mix_h)).exp()
    neurons = (0.2 * torch.einsum("nf,flu->nlu", features, mix_n)).exp()
    return TraceBatch(context, hidden, heads, neurons, mlp_input)


def fitted_for(name: str, shape: ModelShape, traces: TraceBatch, **predictor) -> FittedPredictor:
    """Selector `name`'s fit on `traces` (its network, if it has one; 3 epochs unless given)."""
    cfg = PredictorConfig(name=name, **{"epochs": 3, **predictor})
    return fit(traces, cfg, shape, name, spec(name).network)


def tiny_statistics(loaded: LoadedModel, sequences: int = 8, length: int = 24, seed: int = 11
                    ) -> CalibrationStatistics:
    """Calibration statistics of a tiny model on random token sequences."""
    g = torch.Generator().manual_seed(seed)
    encoded = [EncodedExample(torch.randint(3, 300, (length,), generator=g).tolist(), 1) for _ in range(sequences)]
    return collect_statistics(loaded, encoded, batch_size=4, progress=False)


def runtime_for(loaded: LoadedModel, name: str, traces: Optional[TraceBatch] = None, level: float = 0.5,
                ranking: str = "per_layer", update: MaskUpdate = MaskUpdate.per_token, seed: int = 3,
                statistics: Optional[CalibrationStatistics] = None, heads: Optional[str] = None,
                neurons: Optional[str] = None, criterion: str = "l2_norm", fits: Optional[dict] = None,
                **sparsity) -> SelectionRuntime:
    """A runtime for `predictor=name` (and the block overrides), every selector fitted on
    `traces` (synthetic ones when None; `fits`: fits by name to reuse, and to add to), at `level`."""
    selection = selection_of(name, heads, neurons)
    traces = traces if traces is not None else synthetic_traces(loaded.shape, 64)
    fits = {} if fits is None else fits
    for n in selection.names():
        fits.setdefault(n, fitted_for(n, loaded.shape, traces))
    if "rule" in sparsity:
        sparsity["rule"] = SelectionRule(sparsity["rule"])
    cfg = SparsityConfig(level=level, ranking=Ranking[ranking], update=update, **sparsity)
    policy = SparsityPolicy(cfg, loaded.shape)
    oracle = (get_criterion(criterion), CriterionConfig())
    return SelectionRuntime(loaded, selection, policy, fits, update, seed, oracle,
                            statistics, cfg.rule, dense_positions=cfg.dense_positions)


def mask_predictor(fitted: FittedPredictor, policy: SparsityPolicy, device=torch.device("cpu"),
                   update: MaskUpdate = MaskUpdate.per_token) -> MaskPredictor:
    """The decode path's MaskPredictor of a fit (fixed masks for a fixed selector)."""
    return MaskPredictor(fitted, policy, device, update, fixed=spec(fitted.kind).fixed)


def runtime_of(loaded: LoadedModel, fitted: FittedPredictor, policy: SparsityPolicy,
               update: MaskUpdate = MaskUpdate.per_token) -> SelectionRuntime:
    """The accuracy path's runtime of a fit's own selector alone."""
    return SelectionRuntime(loaded, selection_of(fitted.kind), policy, {fitted.kind: fitted}, update)
