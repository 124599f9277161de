"""The fit stage: a predictor trained on the traces, cached under the traces' key plus the
predictor's fields; or a given checkpoint, checked against this model and criterion."""

from dataclasses import asdict
from pathlib import Path

from shadow_sweep.cache import StageCache
from shadow_sweep.config import AppConfig
from shadow_sweep.models.loading import LoadedModel
from shadow_sweep.predictors.fit import FittedPredictor, fit
from shadow_sweep.predictors.store import load_predictor, save_predictor
from shadow_sweep.traces.stage import trace_key
from shadow_sweep.traces.store import TraceSet


def predictor_key(cfg: AppConfig) -> dict:
    fields = {k: (v.value if hasattr(v, "value") else v) for k, v in asdict(cfg.predictor).items()}
    fields.pop("checkpoint")
    return {"traces": trace_key(cfg), "predictor": fields}


def predictor_for(cfg: AppConfig, loaded: LoadedModel, traces: TraceSet, cache: StageCache
                  ) -> tuple[FittedPredictor, Path]:
    criterion = cfg.criterion.name.value
    if cfg.predictor.checkpoint:
        folder = Path(cfg.predictor.checkpoint)
    else:
        folder = cache.get_or_build("predictor", predictor_key(cfg), lambda out: save_predictor(
            fit(traces.batch, cfg.predictor, loaded.shape), out, loaded.name, loaded.shape, criterion))
    return load_predictor(folder, loaded.name, loaded.shape, criterion), folder
