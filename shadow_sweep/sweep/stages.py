"""The job's cached stages before its points: traces, each selector's fit, the calibration
statistics; and the decode-latency table of the job's selection (`bench`). Each returns plain
report fields; `sweep/job.py` records them. Evaluation points: `sweep/points.py`."""

import time
from dataclasses import asdict, replace
from typing import Optional

import pandas as pd

from shadow_sweep.cache import StageCache
from shadow_sweep.config import AppConfig, MaskUpdate
from shadow_sweep.decode.benchmark import BenchPoint, run_benchmark
from shadow_sweep.decode.fused import gather_kernels
from shadow_sweep.decode.selection import DecodeSelection
from shadow_sweep.models.loading import LoadedModel
from shadow_sweep.predictors.cost import predictor_cost
from shadow_sweep.predictors.fit import FittedPredictor, predictor_quality, validation_targets
from shadow_sweep.predictors.stage import predictor_for, training_data
from shadow_sweep.selectors.registry import (DENSE, PointSelection, baseline_selections, job_selection,
                                             selection_of, selector_class)
from shadow_sweep.selectors.allocation import GreedyPath
from shadow_sweep.selectors.stage import allocation_for, statistics_for
from shadow_sweep.selectors.statistics import CalibrationStatistics
from shadow_sweep.sparsity.topk import keep_count
from shadow_sweep.sweep.points import (EvaluationPoint, evaluation_points, levels, line_key, point_row,
                                      point_runtime, policy_at)
from shadow_sweep.traces.stage import traces_for
from shadow_sweep.traces.store import TraceSet


def trace_stage(cfg: AppConfig, loaded: LoadedModel, cache: StageCache) -> tuple[TraceSet, dict]:
    started = time.perf_counter()
    (traces, folder), built = cache.built("traces", lambda: traces_for(cfg, loaded, cache))
    size = sum(f.stat().st_size for f in folder.iterdir())
    positions = 0 if traces.tokens is None else len(traces.tokens.example)
    token_bytes = 0  # fp16 inputs and scores, fp32 scale, int32 example and position
    if traces.tokens is not None:
        tokens = traces.tokens
        halves = sum(t.numel() for t in (tokens.shadow_input, tokens.dejavu_input, tokens.mlp_input,
                                         tokens.head_scores, tokens.neuron_scores))
        token_bytes = 2 * halves + 12 * positions
    return traces, {"criterion": cfg.criterion.name.value, "examples": len(traces), "positions": positions,
                    "bytes_per_1000_positions": token_bytes * 1000 / max(positions, 1),
                    "cache_hit": not built, "seconds": time.perf_counter() - started, "bytes": size,
                    "bytes_per_1000_examples": size * 1000 / len(traces), "folder": str(folder)}


def fit_stage(cfg: AppConfig, loaded: LoadedModel, traces: TraceSet, cache: StageCache, name: str
              ) -> tuple[FittedPredictor, dict]:
    """Selector `name`'s fit, its quality on the validation rows (top-k recall at the job's first
    level) and its cost."""
    started = time.perf_counter()
    cls = selector_class(name)
    (fitted, folder), built = cache.built("predictor", lambda: predictor_for(cfg, loaded, traces, cache, name,
                                                                             cls.spec.network))
    policy = policy_at(cfg, levels(cfg)[0], loaded)
    batch = training_data(cfg, traces)
    targets = validation_targets(batch, cfg.predictor)
    predicted = cls.quality_predictions(fitted, targets, batch, cfg.predictor, loaded.shape)
    quality = {} if predicted is None else predictor_quality(
        predicted, targets, keep_count(policy.heads.level, loaded.shape.num_heads),
        keep_count(policy.neurons.level, loaded.shape.num_neurons))
    return fitted, {"predictor": name, "folder": str(folder), "cache_hit": not built,
                    "seconds": time.perf_counter() - started, "quality_at_level": levels(cfg)[0], **fitted.metrics,
                    **quality, **predictor_cost(fitted, loaded)}


def statistics_stage(cfg: AppConfig, loaded: LoadedModel, cache: StageCache) -> tuple[CalibrationStatistics, dict]:
    started = time.perf_counter()
    (statistics, folder), built = cache.built("statistics", lambda: statistics_for(cfg, loaded, cache))
    return statistics, {"folder": str(folder), "cache_hit": not built, "tokens": statistics.tokens,
                        "seconds": time.perf_counter() - started}


def allocation_stage(cfg: AppConfig, loaded: LoadedModel, cache: StageCache, name: str,
                     statistics: CalibrationStatistics) -> tuple[GreedyPath, dict]:
    started = time.perf_counter()
    path, built = cache.built("allocation", lambda: allocation_for(cfg, loaded, cache, name, statistics))
    return path, {"cache_hit": not built, "seconds": time.perf_counter() - started}


def bench_selections(cfg: AppConfig) -> list[PointSelection]:
    """The selections a job's bench times: the selectors `bench.predictors` names, each alone, or
    the job's own selection and its eval.baseline_selectors."""
    if cfg.bench.predictors:
        return [selection_of(name) for name in cfg.bench.predictors]
    return [job_selection(cfg)] + baseline_selections(cfg)


def bench_fields(cfg: AppConfig, point: EvaluationPoint) -> dict:
    """A timed point's naming fields: its evaluation row's, so that the report puts its latency
    beside its quality (the same line)."""
    fields = {**point_row(cfg, point), "line_key": line_key(cfg, point)}
    fields.pop("stage")
    return fields


def bench_rows(cfg: AppConfig, loaded: LoadedModel, fitted: dict[str, FittedPredictor],
               statistics: Optional[CalibrationStatistics] = None, paths: Optional[dict] = None) -> list[dict]:
    """Decode latency on the sparse path: HF generate and our dense path, then each of
    `bench_selections` at the job's levels under each `bench.updates` policy (empty: the job's
    sparsity.update) that the decode path runs it under."""
    updates = [MaskUpdate(u) for u in cfg.bench.updates] or [cfg.sparsity.update]
    bench = type(cfg.bench)(**{**asdict(cfg.bench), "levels": levels(cfg), "updates": updates})
    points = []
    for point in evaluation_points(cfg, bench_selections(cfg), fitted, statistics, paths):
        for update in point.selection.decode_updates(updates):
            if not point.selection.dense:
                runtime = point_runtime(cfg, loaded, point, statistics, update)
                # a fixed selection's masks are the same under every policy: its evaluation's line
                named = cfg if point.selection.fixed() else replace(cfg, sparsity=replace(cfg.sparsity, update=update))
                fields = {**bench_fields(named, point), "update": update.value}
                points.append(BenchPoint(DecodeSelection(runtime), point.level, fields))
    compiled = gather_kernels(bench.kernel, loaded.device, loaded.model.dtype, cfg.paths.cache_dir)
    table: pd.DataFrame = run_benchmark(loaded, points, bench, compiled, cfg.sparsity.prefill,
                                        bench_fields(cfg, EvaluationPoint(DENSE, 0.0)))
    table.insert(0, "stage", "bench")
    return table.to_dict("records")
