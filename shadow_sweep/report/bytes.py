"""Quality against the bytes a decode step reads: each line's curve over the bytes fraction
(drawn by report.plots), and which selector is best at each bytes fraction.

`bytes_fraction` (every evaluation row; selectors.accounting) is the weight bytes one decode step
would read under the point's realised selection, predictor and gate included, over a dense
step's. A line's curve runs through its points sorted by bytes fraction and ends at the dense
point (level 0 reads every byte: 1.0). `best_at_bytes` interpolates each deployable line's log
token perplexity linearly in the bytes fraction between its neighbouring points (never beyond
its own range) at every grid fraction, and names the line with the lowest value there.
"""

import numpy as np
import pandas as pd



def bytes_points(table: pd.DataFrame) -> pd.DataFrame:
    """The summary table's rows that have a bytes fraction."""
    if "bytes_fraction" not in table:
        return pd.DataFrame()
    return table.dropna(subset=["bytes_fraction"])


def curves(points: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Each sparse line's points sorted by bytes fraction, with the dense point appended (the
    same evaluation for every line)."""
    dense = points[points["line"] == "dense"]
    lines = {}
    for line, group in points[points["line"] != "dense"].groupby("line"):
        lines[line] = pd.concat([group, dense]).sort_values("bytes_fraction")
    return lines


def best_at_bytes(points: pd.DataFrame, step: float = 0.05) -> pd.DataFrame:
    """At each bytes fraction of a grid (step `step`, from the lowest deployable point to below 1,
    where every line ends at dense): the line of lowest interpolated token perplexity and the
    runner-up (see the module docstring)."""
    if "token_perplexity" not in points:
        return pd.DataFrame()
    deployable = points if "deployable" not in points else points[points["deployable"].fillna(True).astype(bool)]
    lines = {line: group.dropna(subset=["token_perplexity"]) for line, group in curves(deployable).items()}
    lines = {line: group for line, group in lines.items() if len(group) >= 2}
    if not lines:
        return pd.DataFrame()
    low = min(float(group["bytes_fraction"].min()) for group in lines.values())
    grid = np.round(np.arange(np.ceil(low / step) * step, 1.0 - 1e-9, step), 6)  # 1.0: dense, every line
    rows = []
    for fraction in grid:
        values = {}
        for line, group in lines.items():
            x = group["bytes_fraction"].to_numpy()
            if x.min() - 1e-9 <= fraction <= x.max() + 1e-9:
                values[line] = float(np.exp(np.interp(fraction, x, np.log(group["token_perplexity"].to_numpy()))))
        ranked = sorted(values.items(), key=lambda item: item[1])
        row = {"bytes_fraction": fraction, "best": ranked[0][0], "token_perplexity": ranked[0][1]}
        if len(ranked) > 1:
            row.update(runner_up=ranked[1][0], runner_up_perplexity=ranked[1][1])
        rows.append(row)
    return pd.DataFrame(rows)


def matched_summary(matched: pd.DataFrame) -> pd.DataFrame:
    """Pairs at matched bytes (report.compare.matched_bytes_table) counted per pair of lines, a
    matrix of "better/worse/unresolved": a's points whose log perplexity is below b's at no
    more bytes (resolved), above (resolved), or neither."""
    if matched.empty:
        return pd.DataFrame()
    resolved = matched["log_ppl_resolved"].fillna(False).astype(bool)
    outcome = np.where(~resolved, "unresolved", np.where(matched["log_ppl_diff"] < 0, "better", "worse"))
    counts = matched.assign(outcome=outcome).groupby(["a", "b", "outcome"]).size().unstack(fill_value=0)
    counts = counts.reindex(columns=["better", "worse", "unresolved"], fill_value=0)
    cells = counts.apply(lambda r: f"{r.better}/{r.worse}/{r.unresolved}", axis=1)
    return cells.unstack(fill_value="")
