"""The job's stages: trace and fit (cached), then one measured point at a time.

A point is (predictor, sparsity level) on the accuracy path (lm-eval accuracy and WikiText-2
perplexity with the predictor's masks), or the decode-latency table of the job's predictor
(`bench`). Each returns plain rows; `sweep/job.py` records them.
"""

import json
import resource
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from shadow_sweep.cache import StageCache, plain
from shadow_sweep.config import AppConfig, PredictorName
from shadow_sweep.criteria.registry import get_criterion
from shadow_sweep.data.task_sources import definitions_digest
from shadow_sweep.decode.benchmark import run_benchmark
from shadow_sweep.decode.fused import gather_kernels
from shadow_sweep.evaluation.harness import task_accuracy
from shadow_sweep.evaluation.lm import SparseLM
from shadow_sweep.evaluation.outcomes import (OUTCOMES_NAME, accuracy_fields, outcomes_record, perplexity_fields,
                                             write_outcomes)
from shadow_sweep.evaluation.perplexity import wikitext_perplexity
from shadow_sweep.models.loading import LoadedModel
from shadow_sweep.predictors.cost import predictor_cost
from shadow_sweep.predictors.fit import FittedPredictor, predictor_quality
from shadow_sweep.predictors.runtime import ContextualMasks
from shadow_sweep.predictors.stage import predictor_for, predictor_key, training_data
from shadow_sweep.sparsity.policy import SparsityPolicy
from shadow_sweep.sparsity.topk import keep_count
from shadow_sweep.traces.stage import model_identity, traces_for
from shadow_sweep.traces.store import TraceSet


def peak_memory_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def levels(cfg: AppConfig) -> list[float]:
    return list(cfg.sparsity.levels) or [cfg.sparsity.level]


def policy_at(cfg: AppConfig, level: float, loaded: LoadedModel) -> SparsityPolicy:
    return SparsityPolicy(type(cfg.sparsity)(**{**asdict(cfg.sparsity), "level": level}), loaded.shape)


def trace_stage(cfg: AppConfig, loaded: LoadedModel, cache: StageCache) -> tuple[TraceSet, dict]:
    started = time.perf_counter()
    (traces, folder), built = cache.built("traces", lambda: traces_for(cfg, loaded, cache))
    size = sum(f.stat().st_size for f in folder.iterdir())
    positions = 0 if traces.tokens is None else len(traces.tokens.example)
    token_bytes = 0  # fp16 inputs and scores, fp32 scale, int32 example and position
    if traces.tokens is not None:
        tokens = traces.tokens
        halves = sum(t.numel() for t in (tokens.shadow_input, tokens.dejavu_input, tokens.head_scores,
                                         tokens.neuron_scores))
        token_bytes = 2 * halves + 12 * positions
    return traces, {"criterion": cfg.criterion.name.value, "examples": len(traces), "positions": positions,
                    "bytes_per_1000_positions": token_bytes * 1000 / max(positions, 1),
                    "cache_hit": not built, "seconds": time.perf_counter() - started, "bytes": size,
                    "bytes_per_1000_examples": size * 1000 / len(traces), "folder": str(folder)}


def fit_stage(cfg: AppConfig, loaded: LoadedModel, traces: TraceSet, cache: StageCache) -> tuple[FittedPredictor, dict]:
    started = time.perf_counter()
    (fitted, folder), built = cache.built("predictor", lambda: predictor_for(cfg, loaded, traces, cache))
    policy = policy_at(cfg, levels(cfg)[0], loaded)
    quality = predictor_quality(fitted, training_data(cfg, traces), cfg.predictor, loaded.shape,
                                keep_count(policy.heads.level, loaded.shape.num_heads),
                                keep_count(policy.neurons.level, loaded.shape.num_neurons))
    return fitted, {"predictor": cfg.predictor.name.value, "folder": str(folder), "cache_hit": not built,
                    "seconds": time.perf_counter() - started, "quality_at_level": levels(cfg)[0], **fitted.metrics,
                    **quality, **predictor_cost(fitted, loaded)}


def evaluation_points(cfg: AppConfig, fitted: FittedPredictor) -> list[tuple[FittedPredictor, float]]:
    """Dense (sparsity 0, unless eval.dense_baseline=false), then the predictor at every level."""
    dense = FittedPredictor(PredictorName.dense, fitted.mean_head_scores, fitted.mean_neuron_scores)
    points = [(dense, 0.0)] if cfg.eval.dense_baseline or fitted.kind == PredictorName.dense else []
    return points + [(fitted, level) for level in levels(cfg) if fitted.kind != PredictorName.dense]


def point_row(cfg: AppConfig, predictor: FittedPredictor, level: float) -> dict:
    """The fields naming an evaluation point (its `results.point_id`); dense has no update."""
    dense = predictor.kind == PredictorName.dense
    return {"stage": "evaluate", "predictor": predictor.kind.value, "sparsity": level,
            "update": "dense" if dense else cfg.sparsity.update.value,
            "prefill": "dense" if dense else cfg.sparsity.prefill.value}


def point_key(cfg: AppConfig, predictor: FittedPredictor, level: float) -> dict:
    """Cache key of one evaluation point: the model, what is evaluated and on which data, and
    for a sparse point the predictor (its traces included) and the sparsity at this level."""
    accuracy = plain(asdict(cfg.eval))
    for unused in ("dense_baseline", "batch_size"):  # scores equal any batch size (tested)
        accuracy.pop(unused)
    accuracy.pop("include_path")  # where the task YAMLs lie: their content is keyed below
    perplexity = asdict(cfg.perplexity)
    perplexity.pop("batch_size")
    key = {"model": model_identity(cfg), "accuracy": accuracy if cfg.stages.accuracy else None,
           "perplexity": perplexity if cfg.stages.perplexity else None, "data_split": asdict(cfg.data_split),
           "data_root": str(Path(cfg.paths.data_root).resolve()), "predictor": predictor.kind.value}
    definitions = definitions_digest(cfg.eval.tasks, cfg.eval.include_path) if cfg.stages.accuracy else None
    if definitions:  # the user's task definitions, by content
        key["task_definitions"] = definitions
    if predictor.kind != PredictorName.dense:
        sparsity = plain(asdict(cfg.sparsity))
        sparsity.pop("levels")
        key.update(fitted=predictor_key(cfg), checkpoint=cfg.predictor.checkpoint, sparsity={**sparsity, "level": level})
    return key


def cached_point(cfg: AppConfig, loaded: LoadedModel, predictor: FittedPredictor, level: float, tasks: list,
                 documents: list[str], cache: StageCache) -> tuple[dict, Path]:
    """evaluate_point through the stage cache (stage `evaluation`): a dense baseline shared by
    the jobs of a sweep, or a point a killed job finished, is measured once. Returns the row
    and the entry's outcomes file."""

    def build(out: Path) -> None:
        row, record = evaluate_point(cfg, loaded, predictor, level, tasks, documents)
        write_outcomes(record, out)
        (out / "row.json").write_text(json.dumps(row))

    folder, built = cache.built("evaluation", lambda: cache.get_or_build(
        "evaluation", point_key(cfg, predictor, level), build))
    return {**json.loads((folder / "row.json").read_text()), "cache_hit": not built}, folder / OUTCOMES_NAME


def evaluate_point(cfg: AppConfig, loaded: LoadedModel, predictor: FittedPredictor, level: float, tasks: list,
                   documents: list[str]) -> tuple[dict, dict]:
    """Task accuracy through lm-eval and WikiText-2 perplexity with the predictor's masks,
    chosen as `sparsity.update` and `sparsity.prefill` say: the row (with errors) and the
    per-document outcomes."""
    started = time.perf_counter()
    sparsity = cfg.sparsity
    oracle = (get_criterion(cfg.criterion.name.value), cfg.criterion)
    runtime = ContextualMasks(loaded, predictor, policy_at(cfg, level, loaded), seed=cfg.predictor.seed,
                              oracle=oracle, update=sparsity.update)
    row = {**point_row(cfg, predictor, level), "ranking_rule": runtime.ranking_rule}
    accuracy = ppl = None
    with runtime:
        if tasks:
            lm = SparseLM(loaded, cfg.eval.batch_size, cfg.eval.max_length, cfg.model.add_bos_token, runtime,
                          sparsity.prefill)
            accuracy = task_accuracy(lm, tasks, cfg.eval)
            row.update(accuracy_fields(accuracy))
        if cfg.stages.perplexity:
            lm = SparseLM(loaded, cfg.perplexity.batch_size, add_bos_token=cfg.model.add_bos_token)
            ppl = wikitext_perplexity(lm, documents, cfg.perplexity.window,
                                      cfg.perplexity.stride or cfg.perplexity.window, progress=True)
            row.update(perplexity_fields(ppl, seed=cfg.data_split.seed))
    row.update(eval_seconds=time.perf_counter() - started, peak_memory_mib=peak_memory_mib(),
               predictor_network_calls=runtime.network_calls)
    return row, outcomes_record(accuracy, ppl)


def bench_rows(cfg: AppConfig, loaded: LoadedModel, fitted: FittedPredictor) -> list[dict]:
    """Decode latency on the sparse path: HF generate and our dense path, then the job's
    predictor at the job's levels under each `bench.updates` policy."""
    learned = fitted.kind.value in ("shadowllm", "dejavu", "static")
    bench = type(cfg.bench)(**{**asdict(cfg.bench), "levels": levels(cfg),
                               "predictors": [fitted.kind.value] if learned else [],
                               "updates": list(cfg.bench.updates) or [cfg.sparsity.update]})
    compiled = gather_kernels(bench.kernel, loaded.device, loaded.model.dtype, cfg.paths.cache_dir)
    policies = {level: policy_at(cfg, level, loaded) for level in bench.levels}
    table: pd.DataFrame = run_benchmark(loaded, {fitted.kind.value: fitted} if learned else {}, policies, bench,
                                        compiled, cfg.sparsity.prefill)
    table.insert(0, "stage", "bench")
    return table.to_dict("records")
