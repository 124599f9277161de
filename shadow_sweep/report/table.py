"""Results files -> one table: a row per (model, predictor, criterion, design, sparsity).

Columns: per-task accuracy, acc_mean, perplexity (accuracy path); ms/token and speed-up per
update policy (latency path); the predictor's quality and cost (its job row). A line label
names predictor x criterion plus every design field that varies across the loaded sweeps.
"""

from pathlib import Path
from typing import Iterable

import pandas as pd

from shadow_sweep.results import (JOB_STAGE, QUALITY_FIELDS, RESULTS_NAME, ResultsFile, latency_mode,
                                        point_id)

DESIGN = ("model", "ranking", "job_update", "job_prefill", "target_norm", "shots", "calibration_examples_per_task")


def results_files(paths: Iterable[str | Path]) -> list[Path]:
    files = []
    for path in map(Path, paths):
        found = [path] if path.is_file() else sorted(path.rglob(RESULTS_NAME))
        if not found:
            raise FileNotFoundError(f"no {RESULTS_NAME} under {path}")
        files += found
    return files


def load_rows(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Every row of these sweeps; a point measured twice (a rerun) keeps its last row."""
    rows = [row for file in results_files(paths) for row in ResultsFile(file).rows()]
    frame = pd.DataFrame(rows)
    if frame.empty:
        raise ValueError(f"the results files under {list(paths)} hold no rows")
    frame["point"] = [point_id(r) + ("" if r.get("stage") != JOB_STAGE else f":{r.get('status')}") for r in rows]
    return frame.drop_duplicates(subset=["job_key", "point"], keep="last").reset_index(drop=True)


def line_labels(frame: pd.DataFrame) -> pd.Series:
    """predictor x criterion (dense: "dense"), plus the design fields that vary."""
    varying = [c for c in DESIGN if c in frame and frame[c].nunique(dropna=True) > 1]

    def label(row) -> str:
        if row["predictor"] == "dense":
            base = "dense"
        else:
            base = f"{row['predictor']} x {row['criterion']}"
        extra = [f"{c}={row[c]}" for c in varying if c == "model" or row["predictor"] != "dense"]
        return " ".join([base] + extra)

    return frame.apply(label, axis=1)


def _evaluation(frame: pd.DataFrame) -> pd.DataFrame:
    evaluated = frame[frame["stage"] == "evaluate"].copy()
    evaluated["line"] = line_labels(evaluated)
    metrics = [c for c in evaluated.columns if c.startswith("acc/")] + \
        [c for c in ("acc_mean", "word_perplexity", "token_perplexity") if c in evaluated]
    return evaluated.groupby(["line", "sparsity"], as_index=False)[metrics].mean()


def _latency(frame: pd.DataFrame) -> pd.DataFrame:
    bench = frame[(frame["stage"] == "bench") & (frame["path"] == "ours")].copy()
    bench["line"] = line_labels(bench)
    bench["mode"] = [latency_mode(row) for row in bench.to_dict("records")]
    latency = bench.pivot_table(index=["line", "sparsity"], columns="mode",
                                values=["ms_per_token", "speedup_vs_dense"], aggfunc="mean")
    latency.columns = [f"{metric}/{update}" for metric, update in latency.columns]
    return latency.reset_index()


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (line, sparsity): accuracy-path metrics, latency per update policy, and the
    line's predictor quality."""
    parts = []
    if (frame["stage"] == "evaluate").any():
        parts.append(_evaluation(frame))
    if "path" in frame and ((frame["stage"] == "bench") & (frame["path"] == "ours")).any():
        parts.append(_latency(frame))
    if not parts:
        return pd.DataFrame(columns=["line", "sparsity"])
    table = parts[0] if len(parts) == 1 else parts[0].merge(parts[1], on=["line", "sparsity"], how="outer")
    jobs = frame[frame["stage"] == JOB_STAGE].copy()
    quality = [c for c in QUALITY_FIELDS if c in jobs]
    if quality:
        jobs = jobs[jobs["status"] == "ok"].assign(predictor=lambda j: j["job_predictor"])
        jobs["line"] = line_labels(jobs)
        table = table.merge(jobs.groupby("line", as_index=False)[quality].mean(), on="line", how="left")
    return table.sort_values(["line", "sparsity"]).reset_index(drop=True)
