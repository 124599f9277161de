"""Evaluation points: a selection (one selector per block) at one sparsity level, measured on the
accuracy path (lm-eval accuracy and WikiText-2 perplexity under its masks), through the stage
cache. A job's points are dense (unless eval.dense_baseline=false), its own selection at every
level, and each of `eval.baseline_selectors` at every level.
"""

import json
import resource
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

from shadow_sweep.cache import StageCache, cache_key, plain
from shadow_sweep.config import AppConfig, MaskUpdate
from shadow_sweep.criteria.registry import get_criterion
from shadow_sweep.data.task_sources import definitions_digest
from shadow_sweep.evaluation.harness import task_accuracy
from shadow_sweep.evaluation.lm import SparseLM
from shadow_sweep.evaluation.outcomes import (OUTCOMES_NAME, accuracy_fields, outcomes_record, perplexity_fields,
                                             write_outcomes)
from shadow_sweep.evaluation.perplexity import wikitext_perplexity
from shadow_sweep.models.loading import LoadedModel
from shadow_sweep.predictors.fit import FittedPredictor
from shadow_sweep.predictors.stage import predictor_key
from shadow_sweep.selectors.base import Need
from shadow_sweep.selectors.registry import DENSE, PointSelection, selector_class
from shadow_sweep.selectors.runtime import SelectionRuntime
from shadow_sweep.selectors.stage import allocation_key, statistics_key
from shadow_sweep.selectors.statistics import CalibrationStatistics
from shadow_sweep.sparsity.policy import SparsityPolicy
from shadow_sweep.traces.stage import model_identity


def peak_memory_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def levels(cfg: AppConfig) -> list[float]:
    return list(cfg.sparsity.levels) or [cfg.sparsity.level]


def policy_at(cfg: AppConfig, level: float, loaded: LoadedModel) -> SparsityPolicy:
    return SparsityPolicy(type(cfg.sparsity)(**{**asdict(cfg.sparsity), "level": level}), loaded.shape)


def needs_of(cfg: AppConfig, selection: PointSelection) -> dict[str, frozenset]:
    """What each selector of the selection needs under `cfg`."""
    return {name: selector_class(name).needs(cfg) for name in selection.names()}


@dataclass
class EvaluationPoint:
    selection: PointSelection
    level: float
    fitted: dict[str, FittedPredictor] = field(default_factory=dict)  # the fits of its selectors that need one
    levels: dict = field(default_factory=dict)  # selector name -> {Slot: [L]} levels, from an allocation


def evaluation_points(cfg: AppConfig, selections: list[PointSelection], fitted: dict[str, FittedPredictor],
                      statistics: Optional[CalibrationStatistics], paths: Optional[dict] = None
                      ) -> list[EvaluationPoint]:
    """Dense (sparsity 0, unless eval.dense_baseline=false), then every selection at every level
    (`paths`: the allocation of each selector that allocates, by name); a selection whose needs
    are not met (a stage switched off) is left out."""
    paths = paths or {}
    points = [EvaluationPoint(DENSE, 0.0)] if cfg.eval.dense_baseline or all(s.dense for s in selections) else []
    for selection in selections:
        if selection.dense:
            continue
        needs = needs_of(cfg, selection)
        if any(Need.traces in n and name not in fitted for name, n in needs.items()):
            print(f"point {selection.label}: left out (its selectors need a fit; stages.trace/fit are off)")
            continue
        if statistics is None and any(Need.statistics in n for n in needs.values()):
            print(f"point {selection.label}: left out (its selectors need calibration statistics)")
            continue
        own = {name: fitted[name] for name in selection.names() if name in fitted}
        allocated = [name for name in selection.names() if name in paths]
        points += [EvaluationPoint(selection, level, own, {name: paths[name].levels_at(level) for name in allocated})
                   for level in levels(cfg)]
    return points


def point_row(cfg: AppConfig, point: EvaluationPoint) -> dict:
    """The fields naming an evaluation point (its `results.point_id`); dense has no update."""
    selection = point.selection
    dense = selection.dense
    heads_point, neurons_point = selection.points()
    return {"stage": "evaluate", "predictor": selection.label, "heads_selector": selection.heads,
            "neurons_selector": selection.neurons, "heads_point": heads_point.value,
            "neurons_point": neurons_point.value, "deployable": selection.deployable(),
            "fixed": selection.fixed(),
            "uses_criterion": any(selector_class(name).uses_criterion(cfg) for name in selection.names()),
            "sparsity": point.level, "update": "dense" if dense else cfg.sparsity.update.value,
            "prefill": "dense" if dense else cfg.sparsity.prefill.value}


def point_key(cfg: AppConfig, point: EvaluationPoint) -> dict:
    """Cache key of one evaluation point: the model, what is evaluated and on which data, and
    for a sparse point its selectors (each one's fit, statistics or fields) and the sparsity."""
    accuracy = plain(asdict(cfg.eval))
    for unused in ("dense_baseline", "batch_size", "share_contexts", "baseline_selectors"):  # the same scores (tested)
        accuracy.pop(unused)
    accuracy.pop("include_path")  # where the task YAMLs lie: their content is keyed below
    perplexity = asdict(cfg.perplexity)
    perplexity.pop("batch_size")
    selection = point.selection
    key = {"model": model_identity(cfg), "accuracy": accuracy if cfg.stages.accuracy else None,
           "perplexity": perplexity if cfg.stages.perplexity else None, "data_split": asdict(cfg.data_split),
           "data_root": str(Path(cfg.paths.data_root).resolve()),
           "selectors": {"heads": selection.heads, "neurons": selection.neurons}}
    definitions = definitions_digest(cfg.eval.tasks, cfg.eval.include_path) if cfg.stages.accuracy else None
    if definitions:  # the user's task definitions, by content
        key["task_definitions"] = definitions
    if selection.dense:
        return key
    sparsity = plain(asdict(cfg.sparsity))
    sparsity.pop("levels")
    key["sparsity"] = {**sparsity, "level": point.level}
    for name, needs in needs_of(cfg, selection).items():
        own = dict(selector_class(name).key_fields(cfg))
        if Need.traces in needs:
            own.update(fitted=predictor_key(cfg, name), checkpoint=cfg.predictor.checkpoint)
        if Need.statistics in needs:
            own["statistics"] = statistics_key(cfg)
        if selector_class(name).allocates(cfg):
            own["allocation"] = allocation_key(cfg, name)
        key[f"selector/{name}"] = own
    return key


def line_key(cfg: AppConfig, point: EvaluationPoint) -> str:
    """What makes two points one line of a report: their cache key without the level and the
    seeds (rows differing only there are one curve, and seeds are averaged)."""
    unseeded = replace(cfg, calibration=replace(cfg.calibration, seed=0), predictor=replace(cfg.predictor, seed=0))
    return cache_key("line", point_key(unseeded, replace(point, level=0.5 if point.level else 0.0)))


def cached_point(cfg: AppConfig, loaded: LoadedModel, point: EvaluationPoint, tasks: list, documents: list[str],
                 statistics: Optional[CalibrationStatistics], cache: StageCache) -> tuple[dict, Path]:
    """evaluate_point through the stage cache (stage `evaluation`): a dense baseline or a
    training-free point shared by the jobs of a sweep, or a point a killed job finished, is
    measured once. Returns the row and the entry's outcomes file."""

    def build(out: Path) -> None:
        row, record = evaluate_point(cfg, loaded, point, tasks, documents, statistics)
        write_outcomes(record, out)
        (out / "row.json").write_text(json.dumps(row))

    folder, built = cache.built("evaluation", lambda: cache.get_or_build("evaluation", point_key(cfg, point), build))
    row = json.loads((folder / "row.json").read_text())
    return {**row, "line_key": line_key(cfg, point), "cache_hit": not built}, folder / OUTCOMES_NAME


def point_runtime(cfg: AppConfig, loaded: LoadedModel, point: EvaluationPoint,
                  statistics: Optional[CalibrationStatistics] = None, update: Optional[MaskUpdate] = None
                  ) -> SelectionRuntime:
    """The point's selectors on the model (both measurement paths use it), under `update`
    (default: sparsity.update)."""
    sparsity = cfg.sparsity
    criterion = (get_criterion(cfg.criterion.name.value), cfg.criterion)
    return SelectionRuntime(loaded, point.selection, policy_at(cfg, point.level, loaded), point.fitted,
                            update or sparsity.update, cfg.predictor.seed, criterion, statistics, sparsity.rule,
                            point.levels, sparsity.dense_positions)


def evaluate_point(cfg: AppConfig, loaded: LoadedModel, point: EvaluationPoint, tasks: list, documents: list[str],
                   statistics: Optional[CalibrationStatistics] = None) -> tuple[dict, dict]:
    """Task accuracy through lm-eval and WikiText-2 perplexity with the point's masks, chosen as
    `sparsity.update` and `sparsity.prefill` say: the row (with errors, and what the selection
    realised: kept fractions, bytes per token) and the per-document outcomes."""
    started = time.perf_counter()
    sparsity = cfg.sparsity
    runtime = point_runtime(cfg, loaded, point, statistics)
    row = {**point_row(cfg, point), "ranking_rule": runtime.ranking_rule}
    accuracy = ppl = None
    with runtime:
        if tasks:
            lm = SparseLM(loaded, cfg.eval.batch_size, cfg.eval.max_length, cfg.model.add_bos_token, runtime,
                          sparsity.prefill, cfg.eval.share_contexts)
            accuracy = task_accuracy(lm, tasks, cfg.eval)
            row.update(accuracy_fields(accuracy))
        if cfg.stages.perplexity:
            lm = SparseLM(loaded, cfg.perplexity.batch_size, add_bos_token=cfg.model.add_bos_token)
            ppl = wikitext_perplexity(lm, documents, cfg.perplexity.window,
                                      cfg.perplexity.stride or cfg.perplexity.window, progress=True)
            row.update(perplexity_fields(ppl, seed=cfg.data_split.seed))
    row.update(runtime.account.summary())
    row.update(eval_seconds=time.perf_counter() - started, peak_memory_mib=peak_memory_mib(),
               predictor_network_calls=runtime.network_calls)
    return row, outcomes_record(accuracy, ppl)
