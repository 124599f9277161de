"""Experiment tracking (config group `logger`): one W&B run per job, or nothing.

A W&B run gets the resolved config, group = model + criterion, job_type = predictor, tags
(predictor, ranking, update policies, sweep id), every measured point logged against a
`sparsity` axis (`define_metric`), summary metrics, the job's rows as a table, and the fitted
predictor as a `model` artifact. Offline unless an API key is configured. Any W&B error
is reported once and disables the tracker: the local results file never depends on it.
"""

import netrc
import os
import warnings
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from shadow_sweep.config import AppConfig, LoggerName, WandbMode
from shadow_sweep.results import latency_mode
from shadow_sweep.selectors.registry import job_selection

METRIC_FIELDS = ("acc_mean", "acc_mean_stderr", "token_perplexity", "token_perplexity_low", "token_perplexity_high",
                 "word_perplexity", "bits_per_byte", "bytes_fraction")
NOT_TASK_METRICS = ("kept/", "kept_p05/", "kept_p95/", "documents/", "pair_key/")  # row fields with a slash


def task_metric(key: str) -> bool:
    """`<metric>/<task>` (every metric of a task's metric_list, with its stderr)."""
    return "/" in key and not key.startswith(NOT_TASK_METRICS)


def point_metrics(row: dict) -> dict[str, float]:
    """A results row -> W&B metrics on the sparsity axis (bench rows keyed by their update; the
    rows of a baseline selection, `eval.baseline_selectors`, under `baseline/<its label>/`)."""
    if row["stage"] == "bench":
        name = latency_mode(row)
        return {"sparsity": row["sparsity"], f"ms_per_token/{name}": row["ms_per_token"],
                f"ms_per_token_min/{name}": row["ms_per_token_min"], f"ms_per_token_max/{name}": row["ms_per_token_max"],
                f"speedup_vs_dense/{name}": row["speedup_vs_dense"]}
    metrics = {k: v for k, v in row.items() if k in METRIC_FIELDS or task_metric(k)}
    own = row["predictor"] in ("dense", row.get("job_predictor"))
    prefix = "" if own else f"baseline/{row['predictor']}/"
    return {"sparsity": row["sparsity"],
            **{prefix + k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}}


def resolve_mode(mode: WandbMode) -> str:
    if mode != WandbMode.auto:
        return mode.value
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        return "online" if netrc.netrc().authenticators("api.wandb.ai") else "offline"
    except (FileNotFoundError, netrc.NetrcParseError):
        return "offline"


class Tracker:
    """No tracking (logger=none); the interface of every tracker."""

    def log_point(self, row: dict) -> None:
        pass

    def finish(self, rows: list[dict], summary: dict, predictor_folder: Optional[str], failed: bool) -> None:
        pass


class WandbTracker(Tracker):
    def __init__(self, cfg: AppConfig, config: dict[str, Any], run_dir: Path, name: str, sweep_id: str):
        import wandb

        self.wandb = wandb
        self.cfg = cfg
        sparsity = cfg.sparsity
        label = job_selection(cfg).label
        tags = [label, f"ranking:{sparsity.ranking.value}", f"update:{sparsity.update.value}",
                f"prefill:{sparsity.prefill.value}", f"sweep:{sweep_id}"[:64]]
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run = None
        try:
            self.run = wandb.init(
                project=cfg.logger.project, entity=cfg.logger.entity, dir=str(run_dir), name=name,
                group=f"{cfg.model.name}-{cfg.criterion.name.value}", job_type=label,
                tags=tags + list(cfg.logger.tags), config=config, mode=resolve_mode(cfg.logger.mode),
                settings=wandb.Settings(quiet=True))  # the job's first screen says where the run is
            self.run.define_metric("sparsity")
            self.run.define_metric("*", step_metric="sparsity")
        except Exception as error:
            self._disable(error)

    def _disable(self, error: Exception) -> None:
        """W&B must never cost the local results: warn once and stop logging this job."""
        warnings.warn(f"W&B logging disabled for this job: {error!r}; the results file has every row")
        self.run = None

    def _safely(self, action) -> None:
        if self.run is None:
            return
        try:
            action()
        except Exception as error:
            self._disable(error)

    def log_point(self, row: dict) -> None:
        self._safely(lambda: self.run.log(point_metrics(row)))

    def finish(self, rows: list[dict], summary: dict, predictor_folder: Optional[str], failed: bool) -> None:
        def close() -> None:
            for key, value in summary.items():
                self.run.summary[key] = value
            for row in rows:
                if row["stage"] == "evaluate":
                    for key, value in point_metrics(row).items():
                        if key != "sparsity":
                            self.run.summary[f"{key}@{row['predictor']}:{row['sparsity']}"] = value
            if rows:
                self.run.log({"results": self.wandb.Table(dataframe=pd.DataFrame(rows).astype(str))})
            if predictor_folder and self.cfg.logger.log_predictor and not failed:
                name = f"predictor-{self.cfg.model.name}-{self.cfg.criterion.name.value}-{self.cfg.predictor.name}"
                artifact = self.wandb.Artifact(name, type="model", metadata={"folder": predictor_folder})
                artifact.add_dir(predictor_folder)
                self.run.log_artifact(artifact)
            self.run.finish(exit_code=1 if failed else 0)

        self._safely(close)


def open_tracker(cfg: AppConfig, config: dict[str, Any], run_dir: Path, name: str, sweep_id: str) -> Tracker:
    if cfg.logger.name == LoggerName.wandb:
        return WandbTracker(cfg, config, run_dir, name, sweep_id)
    return Tracker()
