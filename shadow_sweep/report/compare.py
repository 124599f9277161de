"""Paired comparisons between the points of a sweep, from their per-document outcomes.

Along one axis (predictor, criterion or update policy), two evaluation rows are a pair when
their configs are identical but for that axis's field and seeds (`pair_key/<axis>`) and they
sit at the same sparsity; along the predictor axis every sparse point is also paired with the
dense point of its config. For each pair: the difference in mean accuracy (a - b, mean over
tasks of per-task differences, bootstrap stratified by task) and in log token perplexity
(paired bootstrap over the perplexity's windows or documents), each with its 95% CI and
whether it excludes 0. Pairs form only on identical document-id sets (and identical perplexity
windows); a point repeated with other seeds contributes each document's outcome averaged over
its seeds, so the CI covers document variation (seeds are counted in `seeds_a` / `seeds_b`).
"""

from itertools import combinations
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from shadow_sweep.evaluation.outcomes import task_outcomes
from shadow_sweep.results import COMPARISON_AXES, ResultsFile
from shadow_sweep.statistics import PairedDifference, paired_difference, paired_ratio_difference

COLUMNS = ["axis", "a", "b", "sparsity", "seeds_a", "seeds_b", "documents", "acc_diff", "acc_low", "acc_high",
           "acc_resolved", "windows", "log_ppl_diff", "log_ppl_low", "log_ppl_high", "log_ppl_resolved"]


def _read(row: dict) -> dict:
    return ResultsFile(Path(row["results_dir"]) / "results.jsonl").outcomes(row)


def seed_averaged(records: list[dict]) -> tuple[dict, Optional[list[dict]]]:
    """({task: {doc id: acc averaged over records}}, perplexity windows with NLL averaged), the
    records being one point measured under several seeds on the same documents."""
    accuracy = [task_outcomes(r) for r in records]
    averaged = {task: {doc: float(np.mean([a[task][doc] for a in accuracy])) for doc in accuracy[0][task]}
                for task in accuracy[0]}
    windows = records[0]["perplexity_windows"]
    if windows:
        nll = np.mean([[w["nll"] for w in r["perplexity_windows"]] for r in records], axis=0)
        windows = [{**w, "nll": float(v)} for w, v in zip(windows, nll)]
    return averaged, windows


def _same_windows(a: list[dict], b: list[dict]) -> bool:
    return bool(a) and [(w["document"], w["tokens"]) for w in a] == [(w["document"], w["tokens"]) for w in b]


def _fields(prefix: str, result: Optional[PairedDifference]) -> dict:
    if result is None:
        return {f"{prefix}_diff": np.nan, f"{prefix}_low": np.nan, f"{prefix}_high": np.nan, f"{prefix}_resolved": None}
    return {f"{prefix}_diff": result.difference, f"{prefix}_low": result.low, f"{prefix}_high": result.high,
            f"{prefix}_resolved": result.excludes_zero}


def compare_pair(a: list[dict], b: list[dict], seed: int = 0) -> dict:
    """One pair's row: a and b are the outcome records of each side's seeds."""
    accuracy_a, windows_a = seed_averaged(a)
    accuracy_b, windows_b = seed_averaged(b)
    same_documents = bool(accuracy_a) and accuracy_a.keys() == accuracy_b.keys() and all(
        accuracy_a[t].keys() == accuracy_b[t].keys() for t in accuracy_a)
    accuracy = paired_difference(accuracy_a, accuracy_b, seed) if same_documents else None
    perplexity = None
    if _same_windows(windows_a, windows_b):
        perplexity = paired_ratio_difference([w["nll"] for w in windows_a], [w["nll"] for w in windows_b],
                                             [w["tokens"] for w in windows_a], seed)
    return {"documents": accuracy.documents if accuracy else 0, **_fields("acc", accuracy),
            "windows": len(windows_a) if perplexity else 0, **_fields("log_ppl", perplexity)}


def comparison_table(frame: pd.DataFrame, axis: str = "predictor", seed: int = 0) -> pd.DataFrame:
    """Every pair along `axis` (a key of results.COMPARISON_AXES) of the evaluation rows of
    `frame` (report.table.load_rows: rows with `outcomes`, `results_dir` and the pair keys)."""
    if axis not in COMPARISON_AXES:
        raise ValueError(f"axis must be one of {sorted(COMPARISON_AXES)}, got {axis!r}")
    key = f"pair_key/{axis}"
    needed = {key, "outcomes", "results_dir"}
    evaluated = frame[frame["stage"] == "evaluate"] if needed <= set(frame) else frame.iloc[0:0]
    evaluated = evaluated.dropna(subset=[key, "outcomes"])
    rows = []
    for _, group in evaluated.groupby(key):
        sides = {(value, level): [_read(r) for r in points.drop_duplicates("outcomes").to_dict("records")]
                 for (value, level), points in group.groupby([axis, "sparsity"])}
        for pair in combinations(sorted(sides), 2):
            a, b = sorted(pair, key=lambda side: side[0] == "dense")  # a sparse point minus dense
            if a[1] != b[1] and not (axis == "predictor" and b[0] == "dense"):
                continue
            rows.append({"axis": axis, "a": a[0], "b": b[0], "sparsity": a[1], "seeds_a": len(sides[a]),
                         "seeds_b": len(sides[b]), **compare_pair(sides[a], sides[b], seed)})
    return pd.DataFrame(rows, columns=COLUMNS)
