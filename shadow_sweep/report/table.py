"""Results files -> one table: a row per (model, predictor, criterion, design, sparsity).

Columns: per-task accuracy, acc_mean with its 95% CI half-width (`acc_mean_ci95`, from the
stderr over documents), token perplexity with its 95% CI (`token_perplexity_low` / `_high`),
`seeds` (rows that differ only in calibration / predictor seeds, averaged) and the spread of
acc_mean across them (`acc_mean_seed_sd`); ms/token and speed-up per update policy (latency
path); the predictor's quality and cost (its job row). A line label names predictor x
criterion plus every design field that varies across the loaded sweeps.
"""

import hashlib
from pathlib import Path
from typing import Iterable

import pandas as pd

from shadow_sweep.results import (JOB_STAGE, LATER_DESIGN_DEFAULTS, QUALITY_FIELDS, RESULTS_NAME, ResultsFile,
                                  latency_mode, point_id)

NOT_TABLED = ("kept", "documents/", "pair_key/")  # per-task metrics are tabled (their stderr not), not these
BYTES_COLUMNS = ("bytes_fraction", "bytes_fraction_p05", "bytes_fraction_p95")  # selectors.accounting
OPTIONAL_DESIGN = {"predictor_width": None, "predictor_bottleneck": None, **LATER_DESIGN_DEFAULTS}  # field: default
DESIGN = ("model", "ranking", "job_update", "job_prefill", "target_norm", "shots", "calibration_examples_per_task",
          *OPTIONAL_DESIGN)


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
    rows = [{**row, "results_file": str(file)} for file in results_files(paths) for row in ResultsFile(file).rows()]
    frame = pd.DataFrame(rows)
    if frame.empty:
        raise ValueError(f"the results files under {list(paths)} hold no rows")
    for name, default in LATER_DESIGN_DEFAULTS.items():  # rows from before the field existed
        frame[name] = frame[name].fillna(default) if name in frame else default
    frame["point"] = [point_id(r) + ("" if r.get("stage") != JOB_STAGE else f":{r.get('status')}") for r in rows]
    return frame.drop_duplicates(subset=["job_key", "point"], keep="last").reset_index(drop=True)


def design_value(row, field: str):
    """A design field's value for a label: None where it is unset or its default (an option
    left alone is not named: `teal` rather than `teal allocation=uniform dense_positions=0`);
    whole floats as ints."""
    value = row.get(field)
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if field in OPTIONAL_DESIGN and value == OPTIONAL_DESIGN[field]:
        return None
    return int(value) if isinstance(value, float) and value.is_integer() else value


def line_labels(frame: pd.DataFrame) -> pd.Series:
    """predictor x criterion (dense, and selectors that use no criterion: the predictor alone),
    plus the design fields that vary (the optional ones only where set to another value than
    their default)."""
    varying = [c for c in DESIGN if c in frame and frame[c].nunique(dropna=True) > 1]

    def label(row) -> str:
        if row["predictor"] == "dense" or row.get("uses_criterion") is False:
            base = str(row["predictor"])
        else:
            base = f"{row['predictor']} x {row['criterion']}"
        named = [c for c in varying if c == "model" or row["predictor"] != "dense"]
        extra = [f"{c}={design_value(row, c)}" for c in named if design_value(row, c) is not None]
        return " ".join([base] + extra)

    return frame.apply(label, axis=1)


Z95 = 1.959964  # normal quantile of a two-sided 95% interval


def point_identity(frame: pd.DataFrame) -> pd.Series:
    """What makes two rows the same line up to seeds: an evaluation row's `line_key` (its point's
    cache key without level and seeds: every job of a sweep measures the same dense or
    training-free point whatever its criterion or predictor), else the config without seeds and
    levels (`config_key`); dense latency rows are one line."""
    identity = frame.get("config_key", pd.Series(None, index=frame.index))
    dense = frame["predictor"] == "dense"
    identity = identity.where(~dense, frame["outcomes"] if "outcomes" in frame else "dense")  # rows before line_key
    if "line_key" in frame:
        identity = frame["line_key"].where(frame["line_key"].notna(), identity)
    return identity.where(~(dense & (frame["stage"] == "bench")), "dense").fillna("")


def distinct_lines(rows: pd.DataFrame) -> pd.Series:
    """Line labels; a label shared by rows of different identities gets a short tag of the
    identity appended, so different configs are never averaged together."""
    lines = line_labels(rows)
    identity = point_identity(rows)
    shared = identity.groupby(lines).transform("nunique") > 1
    tags = identity.map(lambda key: hashlib.sha256(str(key).encode()).hexdigest()[:6]).astype(str)
    return lines.where(~shared, lines.astype(str) + " [" + tags + "]")


def _evaluation(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per (line, sparsity); a dense point measured by several jobs counts once."""
    evaluated = frame[frame["stage"] == "evaluate"].copy()
    evaluated["line"] = distinct_lines(evaluated)
    evaluated["update"] = evaluated["update"].fillna("unknown") if "update" in evaluated else "unknown"
    if "outcomes" in evaluated:
        evaluated = evaluated[evaluated["outcomes"].isna() | ~evaluated.duplicated(["line", "outcomes"])]
    task_metrics = [c for c in evaluated.columns if "/" in c and "_stderr/" not in c and not c.startswith(NOT_TABLED)
                    and pd.api.types.is_numeric_dtype(evaluated[c])]
    metrics = task_metrics + \
        [c for c in ("acc_mean", "acc_mean_stderr", "word_perplexity", "token_perplexity", "token_perplexity_low",
                     "token_perplexity_high", *BYTES_COLUMNS) if c in evaluated] + \
        [c for c in evaluated.columns if c.startswith("kept/")]
    groups = evaluated.groupby(["line", "sparsity", "update"])
    table = groups[metrics].mean()
    table["seeds"] = groups.size()
    if "deployable" in evaluated:
        table["deployable"] = groups["deployable"].agg(lambda v: bool(v.fillna(True).all()))
    if "fixed" in evaluated:
        table["fixed"] = groups["fixed"].agg(lambda v: bool(v.fillna(False).astype(bool).any()))
    if "acc_mean" in table:
        table["acc_mean_seed_sd"] = groups["acc_mean"].std()
        table["acc_mean_ci95"] = Z95 * table.pop("acc_mean_stderr")
    return table.reset_index()


def _latency(frame: pd.DataFrame) -> pd.DataFrame:
    bench = frame[(frame["stage"] == "bench") & (frame["path"] == "ours")].copy()
    bench["line"] = distinct_lines(bench)
    bench["mode"] = [latency_mode(row) for row in bench.to_dict("records")]
    if "speedup_vs_fastest_dense" in bench:  # its spread over repeats, from ms per token's
        speedup = bench["speedup_vs_fastest_dense"] * bench["ms_per_token"]
        bench["speedup_vs_fastest_dense_min"] = speedup / bench["ms_per_token_max"]
        bench["speedup_vs_fastest_dense_max"] = speedup / bench["ms_per_token_min"]
    values = [c for c in ("ms_per_token", "ms_per_token_min", "ms_per_token_max", "speedup_vs_dense",
                          "speedup_vs_fastest_dense", "speedup_vs_fastest_dense_min", "speedup_vs_fastest_dense_max",
                          "floor_ms_per_token", "x_floor") if c in bench]
    latency = bench.pivot_table(index=["line", "sparsity"], columns="mode", values=values, aggfunc="mean")
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
        jobs["line"] = distinct_lines(jobs)
        table = table.merge(jobs.groupby("line", as_index=False)[quality].mean(), on="line", how="left")
    return table.sort_values(["line", "sparsity"]).reset_index(drop=True)
