"""The fit stage: a predictor trained on the traces, cached under the traces' key plus the
predictor's fields and the update policy (per_token predictors train on the per-token samples,
per_sequence ones on the per-example scores); or a given checkpoint, checked against this model,
criterion and update policy."""

from dataclasses import asdict
from pathlib import Path

from shadow_sweep.cache import StageCache
from shadow_sweep.config import AppConfig, ConfigError, MaskUpdate
from shadow_sweep.criteria.registry import per_token_criteria
from shadow_sweep.models.loading import LoadedModel
from shadow_sweep.predictors.fit import FittedPredictor, fit
from shadow_sweep.predictors.store import load_predictor, save_predictor
from shadow_sweep.traces.stage import trace_key
from shadow_sweep.traces.collect import TraceBatch
from shadow_sweep.traces.store import TraceSet


def predictor_key(cfg: AppConfig) -> dict:
    fields = {k: (v.value if hasattr(v, "value") else v) for k, v in asdict(cfg.predictor).items()}
    fields.pop("checkpoint")
    return {"traces": trace_key(cfg), "predictor": fields, "update": cfg.sparsity.update.value}


def training_data(cfg: AppConfig, traces: TraceSet) -> TraceBatch:
    """Per-token samples under per_token, the per-example scores under per_sequence."""
    if cfg.sparsity.update == MaskUpdate.per_sequence:
        return traces.batch
    if traces.tokens is None:
        raise ConfigError(f"sparsity.update=per_token needs per-token traces: criterion {cfg.criterion.name.value!r} "
                          f"has no per-token form (criteria with one: {', '.join(per_token_criteria())}) or "
                          f"calibration.positions_per_example is 0")
    return traces.tokens


def predictor_for(cfg: AppConfig, loaded: LoadedModel, traces: TraceSet, cache: StageCache
                  ) -> tuple[FittedPredictor, Path]:
    criterion = cfg.criterion.name.value
    update = cfg.sparsity.update.value
    if cfg.predictor.checkpoint:
        folder = Path(cfg.predictor.checkpoint)
    else:
        folder = cache.get_or_build("predictor", predictor_key(cfg), lambda out: save_predictor(
            fit(training_data(cfg, traces), cfg.predictor, loaded.shape), out, loaded.name, loaded.shape, criterion,
            update))
    return load_predictor(folder, loaded.name, loaded.shape, criterion, update), folder
