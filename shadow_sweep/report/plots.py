"""Curves against sparsity, one line per predictor x criterion (and varying design fields),
with 95% CIs as error bars (accuracy: over documents; token perplexity: bootstrap; latency: min
to max over repeats); dense is a dashed horizontal line. And the figure the sweeps exist for:
quality (token perplexity, mean accuracy) against the measured decode speed-up over the
fastest dense path, one point per line x level (its own update policy), CIs of quality and
the spread of the speed-up over repeats; and quality against the bytes a decode step reads
(report.bytes), the comparison of selectors at matched bytes."""

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure  # no pyplot: works headless and leaves a notebook's backend alone

from shadow_sweep.report.bytes import bytes_points, curves

CURVES = {  # file stem: (columns prefix or name, y label, title, log scale)
    "accuracy_vs_sparsity": ("acc_mean", "mean accuracy", "Accuracy vs sparsity", False),
    "perplexity_vs_sparsity": ("token_perplexity", "WikiText-2 token perplexity", "Perplexity vs sparsity", True),
    "latency_vs_sparsity": ("ms_per_token/", "ms per generated token (batch 1)", "Decode latency vs sparsity", False),
}


def curve_columns(table: pd.DataFrame, name: str) -> list[str]:
    """The table's columns for curve `name` that hold data (latency: one per update policy)."""
    prefix = CURVES[name][0]
    columns = [c for c in table.columns if c.startswith(prefix)] if prefix.endswith("/") else \
        [c for c in table.columns if c == prefix]
    return [c for c in columns if table[c].notna().any()]


def error_bars(points: pd.DataFrame, column: str):
    """The 95% CI of `column` as matplotlib's yerr ([2, n] distances below and above), or None."""
    if column == "acc_mean" and "acc_mean_ci95" in points:
        return points["acc_mean_ci95"].to_numpy()
    low, high = {"token_perplexity": ("token_perplexity_low", "token_perplexity_high")}.get(
        column, (column.replace("ms_per_token/", "ms_per_token_min/"), column.replace("ms_per_token/", "ms_per_token_max/")))
    if low in points and high in points and low != column:
        # a percentile CI need not contain the estimate: never a negative bar
        return [(points[column] - points[low]).clip(lower=0).to_numpy(),
                (points[high] - points[column]).clip(lower=0).to_numpy()]
    return None


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
                axes.errorbar(points["sparsity"], points[column], yerr=error_bars(points, column), marker="o",
                              capsize=3, label=label)
    axes.set(xlabel="sparsity (fraction of heads and neurons skipped)", ylabel=ylabel, title=title)
    if log:
        axes.set_yscale("log")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)


SPEED = ("speedup_vs_fastest_dense", "speedup_vs_fastest_dense_min", "speedup_vs_fastest_dense_max")


def quality_latency_points(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of the summary table that have both an evaluation and the latency of their own
    update policy: columns line, sparsity, update, the measured speed-up over the fastest dense
    path of its run (+ min / max over repeats) and the quality."""
    if "update" not in table:
        return pd.DataFrame()
    rows = []
    for row in table.to_dict("records"):
        mode = "dense" if row["sparsity"] == 0 else row["update"]
        if row.get("fixed") is True:  # the same masks under every policy: timed per_sequence
            mode = "per_sequence"
        if pd.notna(row.get(f"{SPEED[0]}/{mode}")):
            rows.append({**row, **{column: row.get(f"{column}/{mode}") for column in SPEED}})
    return pd.DataFrame(rows)


def plot_quality_vs_latency(points: pd.DataFrame, figure) -> None:
    """Token perplexity and mean accuracy against the measured decode speed-up over the fastest
    dense path of the run, one line per selection through its levels, quality with its 95% CI,
    speed-up from its slowest to its fastest repeat; dense at 1 (a dotted line)."""
    quality = [c for c in ("token_perplexity", "acc_mean") if c in points and points[c].notna().any()]
    for axes, column in zip(figure.subplots(1, len(quality), squeeze=False)[0], quality):
        for line, group in points.dropna(subset=[column]).sort_values("sparsity").groupby("line"):
            if line == "dense":
                axes.axhline(float(group[column].iloc[0]), color="black", linestyle=":", linewidth=1, label="dense")
                continue
            xerr = [(group[SPEED[0]] - group[SPEED[1]]).clip(lower=0).to_numpy(),
                    (group[SPEED[2]] - group[SPEED[0]]).clip(lower=0).to_numpy()]
            axes.errorbar(group[SPEED[0]], group[column], xerr=xerr, yerr=error_bars(group, column), marker="o",
                          capsize=2, markersize=3, label=line)
            for x, y, level in zip(group[SPEED[0]], group[column], group["sparsity"]):
                axes.annotate(f"{level:g}", (x, y), fontsize=6, textcoords="offset points", xytext=(3, 3))
        axes.axvline(1.0, color="grey", linewidth=0.8)
        axes.set(xlabel="decode speed-up over the fastest dense path (batch 1)", ylabel=column.replace("_", " "),
                 title=f"{column.replace('_', ' ')} vs measured speed-up")
        if column == "token_perplexity":
            axes.set_yscale("log")
        axes.grid(alpha=0.3)
    handles, labels = figure.axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=5, fontsize=7)


QUALITY = (("token_perplexity", "WikiText-2 token perplexity", True), ("acc_mean", "mean accuracy", False))


def plot_quality_vs_bytes(points: pd.DataFrame, figure) -> None:
    """Token perplexity (log) and mean accuracy against the bytes fraction, one line per
    selection (dashed: not deployable, an analysis bound), 95% CIs as error bars; dense is the
    point at 1.0 every line ends at."""
    quality = [(c, label, log) for c, label, log in QUALITY if c in points and points[c].notna().any()]
    for axes, (column, label, log) in zip(figure.subplots(1, len(quality), squeeze=False)[0], quality):
        for line, group in curves(points.dropna(subset=[column])).items():
            style = "--" if "deployable" in group and not group["deployable"].fillna(True).all() else "-"
            axes.errorbar(group["bytes_fraction"], group[column], yerr=error_bars(group, column), marker="o",
                          linestyle=style, capsize=2, markersize=3, label=line)
        dense = points[points["line"] == "dense"].dropna(subset=[column])
        if len(dense):
            axes.axhline(float(dense[column].iloc[0]), color="black", linestyle=":", linewidth=1, label="dense")
        axes.set(xlabel="weight bytes per decode step / dense (predictor and gate included)", ylabel=label,
                 title=f"{label} vs bytes read")
        if log:
            axes.set_yscale("log")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=6)


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
    at_bytes = bytes_points(table)
    if not at_bytes.empty and at_bytes["bytes_fraction"].nunique() > 1:
        figure = Figure(figsize=(11, 4.5), layout="tight")
        plot_quality_vs_bytes(at_bytes, figure)
        figure.savefig(out / "quality_vs_bytes.png", dpi=120)
        written.append(out / "quality_vs_bytes.png")
    points = quality_latency_points(table)
    if not points.empty:
        figure = Figure(figsize=(10, 5.2), layout="constrained")  # room for the legend below
        plot_quality_vs_latency(points, figure)
        figure.savefig(out / "quality_vs_latency.png", dpi=120)
        written.append(out / "quality_vs_latency.png")
    return written
