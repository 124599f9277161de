"""Curves against sparsity, one line per predictor x criterion (and varying design fields);
dense is a dashed horizontal line."""

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure  # no pyplot: works headless and leaves a notebook's backend alone

CURVES = {  # file stem: (columns prefix or name, y label, title, log scale)
    "accuracy_vs_sparsity": ("acc_mean", "mean accuracy", "Accuracy vs sparsity", False),
    "perplexity_vs_sparsity": ("word_perplexity", "WikiText-2 word perplexity", "Perplexity vs sparsity", True),
    "latency_vs_sparsity": ("ms_per_token/", "ms per generated token (batch 1)", "Decode latency vs sparsity", False),
}


def curve_columns(table: pd.DataFrame, name: str) -> list[str]:
    """The table's columns for curve `name` that hold data (latency: one per update policy)."""
    prefix = CURVES[name][0]
    columns = [c for c in table.columns if c.startswith(prefix)] if prefix.endswith("/") else \
        [c for c in table.columns if c == prefix]
    return [c for c in columns if table[c].notna().any()]


def plot_curve(table: pd.DataFrame, name: str, axes) -> None:
    """Draw curve `name` (a key of CURVES) of a summary table onto matplotlib axes."""
    _, ylabel, title, log = CURVES[name]
    columns = curve_columns(table, name)
    for column in columns:
        for line, points in table.dropna(subset=[column]).groupby("line"):
            label = line if len(columns) == 1 else f"{line} ({column.split('/')[-1]})"
            if set(points["sparsity"]) == {0.0}:
                axes.axhline(points[column].mean(), color="black", linestyle="--", linewidth=1, label=label)
            else:
                axes.plot(points["sparsity"], points[column], marker="o", label=label)
    axes.set(xlabel="sparsity (fraction of heads and neurons skipped)", ylabel=ylabel, title=title)
    if log:
        axes.set_yscale("log")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)


def draw_curves(table: pd.DataFrame, out: Path) -> list[Path]:
    """One PNG per curve the table has data for, in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in CURVES:
        if curve_columns(table, name):
            figure = Figure(figsize=(7, 4.5), layout="tight")
            plot_curve(table, name, figure.subplots())
            figure.savefig(out / f"{name}.png", dpi=120)
            written.append(out / f"{name}.png")
    return written
