"""One sweep point's job: validate, load, trace, fit, evaluate, bench, record.

Every measured point is appended to the results file as soon as it exists (and logged to
the tracker); a relaunch skips a finished job before loading anything, and in a job that
was killed part-way it measures only the missing points (traces and predictors come from
the stage cache). A job that raises writes a `failed` job row naming the error, then raises.
"""

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import pandas as pd
import torch

from shadow_sweep.cache import StageCache, plain
from shadow_sweep.config import AppConfig, ConfigError
from shadow_sweep.data.tasks import EVALUATION, SplitRule
from shadow_sweep.data.wikitext import load_wikitext
from shadow_sweep.data.task_sources import TaskSource
from shadow_sweep.evaluation.harness import build_tasks, check_tasks
from shadow_sweep.models.loading import check_model_files, load_model
from shadow_sweep.results import (JOB_STAGE, QUALITY_FIELDS, RESULTS_NAME, ResultsError, ResultsFile,
                                  comparison_keys, finished_row, job_key, point_id, point_ids)
from shadow_sweep.selectors.base import Need
from shadow_sweep.selectors.registry import PointSelection, baseline_selections, job_selection, selector_class
from shadow_sweep.sweep.points import cached_point, evaluation_points, levels, needs_of, point_row, policy_at
from shadow_sweep.sweep.signals import Terminated, terminated_as_error
from shadow_sweep.sweep.stages import (allocation_stage, bench_rows, bench_selections, fit_stage, statistics_stage,
                                      trace_stage)
from shadow_sweep.sweep.tracking import Tracker, open_tracker
from shadow_sweep.validation import validate

@dataclass
class JobIdentity:
    """Where a job sits in its sweep: the sweep's id and the job's own overrides."""

    sweep_id: str = "single"
    name: str = "job"


def job_label(cfg: AppConfig) -> str:
    """The job's own selection's label (its predictor.name while the names are not valid)."""
    try:
        return job_selection(cfg).label
    except ConfigError:
        return cfg.predictor.name


def design_fields(cfg: AppConfig) -> dict:
    """The config fields a report compares across a sweep, on every row."""
    return {"model": cfg.model.name, "criterion": cfg.criterion.name.value, "job_predictor": job_label(cfg),
            "ranking": cfg.sparsity.ranking.value, "job_update": cfg.sparsity.update.value,
            "job_prefill": cfg.sparsity.prefill.value, "target_norm": cfg.predictor.target_norm.value,
            "shots": cfg.calibration.shots, "calibration_examples_per_task": cfg.calibration.examples_per_task,
            "calibration_seed": cfg.calibration.seed, "predictor_seed": cfg.predictor.seed,
            "predictor_width": cfg.predictor.width, "predictor_bottleneck": cfg.predictor.bottleneck,
            "rule": cfg.sparsity.rule.value if cfg.sparsity.rule else "default",
            "allocation": cfg.sparsity.allocation.value, "dense_positions": cfg.sparsity.dense_positions,
            **comparison_keys(cfg)}


def job_quality(own: PointSelection, reports: dict[str, dict]) -> dict:
    """The job row's quality and cost fields: heads quality from the head selector's fit,
    neurons quality from the neuron selector's, the cost of both fits together."""
    row = {}
    for kind, name in (("heads", own.heads), ("neurons", own.neurons)):
        report = reports.get(name, {})
        row.update({k: report[k] for k in QUALITY_FIELDS if k.startswith(f"{kind}_") and k in report})
    fits = [reports[name] for name in own.names() if name in reports]
    row["predictor_parameters"] = sum(r["predictor_parameters"] for r in fits)
    row["predictor_macs_per_token"] = sum(r["predictor_macs_per_token"] for r in fits)
    row["model_macs_per_token"] = fits[0]["model_macs_per_token"]
    row["predictor_macs_percent_of_model"] = 100.0 * row["predictor_macs_per_token"] / row["model_macs_per_token"]
    return row


class Job:
    def __init__(self, cfg: AppConfig, context: dict, results: ResultsFile, tracker: Tracker, measured: set[str],
                 task_sources: Optional[dict[str, TaskSource]] = None):
        """`measured`: point ids this job already has in the results file (a killed earlier run);
        `task_sources`: the evaluated tasks' sources read by `check_tasks` (else read again)."""
        self.cfg, self.context, self.results, self.tracker, self.measured = cfg, context, results, tracker, measured
        self.task_sources = task_sources or {}
        self.rows: list[dict] = []
        self.summary: dict = {}
        self.predictor_folder: Optional[str] = None

    def record(self, rows: list[dict]) -> None:
        rows = [{**self.context, **row} for row in rows]
        self.results.append(rows)
        for row in rows:
            self.tracker.log_point(row)
        self.rows += rows

    def fits(self, cfg: AppConfig, loaded, cache: StageCache, names: list[str]) -> dict:
        """The traces (when some selector needs a fit) and each such selector's fit; the job
        row gets the traces' and the job's own selection's fit fields (heads quality from its
        head selector, neurons quality from its neuron selector)."""
        if not names or not cfg.stages.trace:
            return {}
        traces, trace_report = trace_stage(cfg, loaded, cache)
        self.summary.update({f"traces_{k}": v for k, v in trace_report.items() if k != "criterion"})
        print(f"traces: {len(traces)} examples of {cfg.criterion.name.value} "
              f"({trace_report['bytes'] / 1e6:.1f} MB, cache hit: {trace_report['cache_hit']})")
        if not cfg.stages.fit:
            return {}
        fitted = {}
        reports = {}
        for name in names:
            fitted[name], reports[name] = fit_stage(cfg, loaded, traces, cache, name)
            report = reports[name]
            print(f"fit {name}: " + ", ".join(
                f"{k} {report[k]:.3g}" for k in report if k.endswith("_mean") or k.endswith("_percent_of_model")))
        own = job_selection(cfg)
        mine = [reports[name] for name in own.names() if name in reports]
        if mine:
            self.predictor_folder = mine[0]["folder"]
            self.summary.update(predictor_cache_hit=all(r["cache_hit"] for r in mine),
                                fit_seconds=sum(r["seconds"] for r in mine), **job_quality(own, reports))
        return fitted

    def run(self) -> None:
        cfg, started = self.cfg, time.perf_counter()
        self.summary["torch_threads"] = torch.get_num_threads()
        measured = self.measured
        if measured:
            print(f"resuming: {len(measured)} points of this job are already in {self.results.path}")
        rule = SplitRule(cfg.data_split.calibration_fraction, cfg.data_split.seed)
        documents = []
        if cfg.stages.perplexity:
            documents = load_wikitext(cfg.paths.data_root, cfg.perplexity.max_documents, part=EVALUATION, rule=rule,
                                      max_words=cfg.perplexity.max_words_per_document)
        cache = StageCache(Path(cfg.paths.cache_dir))
        loaded = load_model(cfg.model, cache)
        self.summary["load_seconds"] = time.perf_counter() - started
        for level in levels(cfg):  # impossible pools fail here, before anything expensive
            policy_at(cfg, level, loaded)
        selections = [job_selection(cfg)] + baseline_selections(cfg)
        needs: dict[str, frozenset] = {}
        for selection in selections + (bench_selections(cfg) if cfg.stages.bench else []):
            needs.update(needs_of(cfg, selection))
        fitted = self.fits(cfg, loaded, cache, [name for name, n in needs.items() if Need.traces in n])
        statistics = None
        if any(Need.statistics in n for n in needs.values()):
            statistics, report = statistics_stage(cfg, loaded, cache)
            self.summary.update(statistics_cache_hit=report["cache_hit"], statistics_seconds=report["seconds"],
                                statistics_tokens=report["tokens"])
            print(f"calibration statistics: {report['tokens']} tokens (cache hit: {report['cache_hit']})")
        paths = {}
        for name in [name for name in needs if selector_class(name).allocates(cfg)]:
            paths[name], report = allocation_stage(cfg, loaded, cache, name, statistics)
            self.summary.update({f"allocation_{name}_cache_hit": report["cache_hit"],
                                 f"allocation_{name}_seconds": report["seconds"]})
        if cfg.stages.accuracy or cfg.stages.perplexity:
            tasks = []
            if cfg.stages.accuracy:
                named = [self.task_sources.get(name, name) for name in cfg.eval.tasks]
                tasks = build_tasks(named, cfg.paths.data_root, rule, cache, cfg.eval.include_path)
            for point in evaluation_points(cfg, selections, fitted, statistics, paths):
                if point_id(point_row(cfg, point)) not in measured:
                    row, outcomes = cached_point(cfg, loaded, point, tasks, documents, statistics, cache)
                    self.record([{**row, "outcomes": self.results.keep_outcomes(outcomes)}])
        if cfg.stages.bench and not any(p.startswith("bench:") for p in measured):
            self.record(bench_rows(cfg, loaded, fitted, statistics, paths))
        self.summary["job_seconds"] = time.perf_counter() - started


def run_job(cfg: AppConfig, output_dir: Path, results: Optional[ResultsFile] = None,
            identity: JobIdentity = JobIdentity()) -> pd.DataFrame:
    """Run (or skip, when finished) one job; its rows as a table. Rows go to `results`
    (default: results.jsonl in output_dir); summary.json to output_dir. Anything that raises,
    bad config values included, leaves a `failed` job row with the error, then propagates."""
    results = results or ResultsFile(output_dir / RESULTS_NAME)
    results.check_writable()  # before anything: work that cannot be recorded is not started
    key = job_key(cfg)
    earlier = results.job_rows(key)
    if cfg.sweep.skip_finished and finished_row(earlier):
        print(f"skipped: this job finished before (job_key {key} in {results.path})")
        return pd.DataFrame([r for r in earlier if r.get("stage") != JOB_STAGE])
    context = {"job_key": key, "sweep_id": identity.sweep_id, "job": identity.name, **design_fields(cfg)}
    job = None
    try:
        validate(cfg)
        check_model_files(cfg.model)
        evaluated = cfg.eval.tasks if cfg.stages.accuracy else []
        calibrating = cfg.calibration.tasks if cfg.stages.trace else []
        sources = check_tasks(evaluated, calibrating, cfg.paths.data_root, cfg.eval.include_path)
        output_dir.mkdir(parents=True, exist_ok=True)
        tracker = open_tracker(cfg, plain(asdict(cfg)), output_dir, identity.name, identity.sweep_id)
        job = Job(cfg, context, results, tracker, point_ids(earlier) if cfg.sweep.skip_finished else set(), sources)
        with terminated_as_error():
            job.run()
    except BaseException as error:
        if isinstance(error, ResultsError):
            raise
        summary = job.summary if job else {}
        reason = "terminated" if isinstance(error, Terminated) else repr(error)[:2000]
        results.append([{**context, "stage": JOB_STAGE, "status": "failed", "error": reason, **summary}])
        if job:
            job.tracker.finish(job.rows, summary, None, failed=True)
        raise
    points = sorted(job.measured | point_ids(job.rows))  # a relaunch checks each is still intact
    results.append([{**context, "stage": JOB_STAGE, "status": "ok", "points": points, **job.summary}])
    (output_dir / "summary.json").write_text(json.dumps({**context, **job.summary}, indent=2, default=str))
    job.tracker.finish(job.rows, job.summary, job.predictor_folder, failed=False)
    return pd.DataFrame(job.rows)
