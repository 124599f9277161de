"""A job's first screen: one line per point of the summary table (report.table), at most
`WIDTH` columns: the line, sparsity (and the level realised on the slots it selects), mean
accuracy +- its 95% CI, token perplexity [95% CI], the bytes fraction of a dense decode step,
ms per token and the speed-up over dense on the latency path (the job's update policy where
it was timed, else the first timed)."""

import math
from typing import Optional

import pandas as pd

WIDTH = 120
LINE_WIDTH = 36
KEPT_PREFIX = "kept/"
SCREEN_COLUMNS = ("line", "sparsity", "acc_mean", "token_ppl [95% CI]", "bytes", "ms/token", "speed-up")


def _number(value, spec: str) -> Optional[str]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return format(value, spec)


def realised_sparsity(row: pd.Series) -> Optional[float]:
    """1 - the mean kept fraction over the slots the selection thinned (kept < 1); None where
    the row has no kept fractions."""
    kept = [row[c] for c in row.index if c.startswith(KEPT_PREFIX) and not pd.isna(row[c])]
    if not kept:
        return None
    thinned = [k for k in kept if k < 0.999]
    return 1.0 - sum(thinned) / len(thinned) if thinned else 0.0


def _latency_modes(table: pd.DataFrame, update: Optional[str]) -> list[str]:
    """The timed update policies, the job's first, then per_token, then the rest (dense last:
    the dense line's only one)."""
    modes = [c.split("/", 1)[1] for c in table.columns if c.startswith("ms_per_token/")]
    return sorted(modes, key=lambda m: (m != update, m != "per_token", m == "dense", m))


def _latency(row: pd.Series, modes: list[str]) -> tuple[str, str]:
    """(ms per token, speed-up) of the row's first timed mode."""
    for mode in modes:
        ms = _number(row.get(f"ms_per_token/{mode}"), ".2f")
        if ms is not None:
            return ms, _number(row.get(f"speedup_vs_fastest_dense/{mode}"), ".2f") or ""
    return "", ""


def screen_table(table: pd.DataFrame, update: Optional[str] = None) -> pd.DataFrame:
    """The summary table's points as short strings, one row each."""
    modes = _latency_modes(table, update)
    rows = []
    for _, row in table.iterrows():
        line = str(row["line"])
        realised = realised_sparsity(row)
        sparsity = _number(row.get("sparsity"), ".2f") or ""
        if realised is not None and row.get("sparsity", 0) > 0:
            sparsity += f" ({realised:.2f})"
        accuracy = _number(row.get("acc_mean"), ".3f")
        ci = _number(row.get("acc_mean_ci95"), ".3f")
        perplexity = _number(row.get("token_perplexity"), ".4g")
        low = _number(row.get("token_perplexity_low"), ".4g")
        high = _number(row.get("token_perplexity_high"), ".4g")
        ms, speedup = _latency(row, modes)
        rows.append({
            "line": line if len(line) <= LINE_WIDTH else line[:LINE_WIDTH - 1] + "~",
            "sparsity": sparsity,
            "acc_mean": "" if accuracy is None else accuracy + (f" +- {ci}" if ci else ""),
            "token_ppl [95% CI]": "" if perplexity is None else perplexity + (f" [{low}, {high}]" if low else ""),
            "bytes": _number(row.get("bytes_fraction"), ".3f") or "",
            "ms/token": ms,
            "speed-up": speedup,
        })
    return pd.DataFrame(rows, columns=list(SCREEN_COLUMNS))


def first_screen(table: pd.DataFrame, update: Optional[str] = None) -> str:
    """The points as text of at most WIDTH columns (speed-up: x over the fastest dense run; bytes:
    the fraction of a dense step's weight bytes)."""
    text = screen_table(table, update).to_string(index=False)
    return "\n".join(line[:WIDTH] for line in text.splitlines())
