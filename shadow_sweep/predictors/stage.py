"""The fit stage: a selector's fit on the traces (its network, if it has one, and the mean
calibration scores), cached under the traces' key plus the selector, the predictor's fields
and the update policy (per_token fits train on the per-token samples, per_sequence ones on the
per-example scores); or a given checkpoint, checked against this model, criterion, update
policy and selector."""

from dataclasses import asdict
from pathlib import Path
from typing import Optional

from shadow_sweep.cache import StageCache, plain
from shadow_sweep.config import AppConfig, ConfigError, MaskUpdate
from shadow_sweep.criteria.registry import per_token_criteria
from shadow_sweep.models.loading import LoadedModel
from shadow_sweep.predictors.fit import FittedPredictor, fit
from shadow_sweep.predictors.layouts import NetworkLayout
from shadow_sweep.predictors.store import load_predictor, save_predictor
from shadow_sweep.traces.stage import trace_key
from shadow_sweep.traces.collect import TraceBatch
from shadow_sweep.traces.store import TraceSet

SELECTION_FIELDS = ("name", "heads", "neurons", "checkpoint")  # which selectors run, not how one is fitted


def predictor_key(cfg: AppConfig, kind: str) -> dict:
    """The fit of selector `kind` under `cfg`."""
    fields = plain(asdict(cfg.predictor))
    for name in SELECTION_FIELDS:
        fields.pop(name)
    return {"traces": trace_key(cfg), "selector": kind, "predictor": fields, "update": cfg.sparsity.update.value}


def training_data(cfg: AppConfig, traces: TraceSet) -> TraceBatch:
    """Per-token samples under per_token, the per-example scores under per_sequence."""
    if cfg.sparsity.update == MaskUpdate.per_sequence:
        return traces.batch
    if traces.tokens is None:
        raise ConfigError(f"sparsity.update=per_token needs per-token traces: criterion {cfg.criterion.name.value!r} "
                          f"has no per-token form (criteria with one: {', '.join(per_token_criteria())}) or "
                          f"calibration.positions_per_example is 0")
    return traces.tokens


def predictor_for(cfg: AppConfig, loaded: LoadedModel, traces: TraceSet, cache: StageCache, kind: str,
                  layout: Optional[NetworkLayout]) -> tuple[FittedPredictor, Path]:
    """Selector `kind`'s fit (its `layout`: its network, None without one); `predictor.checkpoint`
    replaces the fit of the job's own selector `predictor.name`."""
    criterion = cfg.criterion.name.value
    update = cfg.sparsity.update.value
    if cfg.predictor.checkpoint and kind == cfg.predictor.name:
        folder = Path(cfg.predictor.checkpoint)
    else:
        folder = cache.get_or_build("predictor", predictor_key(cfg, kind), lambda out: save_predictor(
            fit(training_data(cfg, traces), cfg.predictor, loaded.shape, kind, layout), out, loaded.name,
            loaded.shape, criterion, update))
    return load_predictor(folder, loaded.name, loaded.shape, criterion, update, kind), folder
