"""Paired comparisons between the points of a sweep, from their per-document outcomes.

Along one axis (predictor, criterion or update policy), two evaluation rows are a pair when
their configs are identical but for that axis's field and seeds (`pair_key/<axis>`) and they
sit at the same sparsity; along the predictor axis every sparse point is also paired with the
dense point of its config. For each pair: the difference in mean accuracy (a - b, mean over
tasks of per-task differences, bootstrap stratified by task) and in log token perplexity
(paired bootstrap over the perplexity's documents, or its windows when there are fewer than
10 documents: `ppl_unit`, the point CI's rule), each with its 95% CI and
whether it excludes 0. Pairs form only on identical document-id sets (and identical perplexity
windows). A point repeated under other seeds (`calibration.seed`, `predictor.seed`) enters with
all its seeds: the difference is that of the seed means, and its CI resamples seeds, then
documents (seed and document variation together; `seeds_a` / `seeds_b` count them).
"""

from itertools import combinations
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from shadow_sweep.evaluation.outcomes import task_outcomes
from shadow_sweep.evaluation.perplexity import Window, resampling_units
from shadow_sweep.report.table import distinct_lines
from shadow_sweep.results import COMPARISON_AXES, ResultsFile
from shadow_sweep.statistics import (PairedDifference, paired_difference, paired_ratio_difference,
                                     two_stage_paired_difference)

BYTES_TOLERANCE = 0.02  # matched-bytes pairs: b reads at least a's bytes fraction less this,
BYTES_WINDOW = 0.1  # and at most a's plus this

COLUMNS = ["axis", "a", "b", "sparsity", "seeds_a", "seeds_b", "documents", "acc_diff", "acc_low", "acc_high",
           "acc_resolved", "ppl_unit", "ppl_units", "log_ppl_diff", "log_ppl_low", "log_ppl_high", "log_ppl_resolved"]


def _read(row: dict) -> dict:
    return ResultsFile(Path(row["results_file"])).outcomes(row)


def accuracy_by_seed(records: list[dict]) -> tuple[dict[str, np.ndarray], dict[str, list[int]]]:
    """({task: acc [seeds, documents]}, {task: document ids}) of one point's seeds; a task whose
    document ids differ between seeds is left out."""
    outcomes = [task_outcomes(r) for r in records]
    arrays, ids = {}, {}
    for task in outcomes[0]:
        documents = sorted(outcomes[0][task])
        if all(sorted(o.get(task, {})) == documents for o in outcomes):
            arrays[task] = np.array([[o[task][d] for d in documents] for o in outcomes])
            ids[task] = documents
    return arrays, ids


def perplexity_by_seed(records: list[dict]) -> tuple[str, np.ndarray, np.ndarray]:
    """(unit, NLL [seeds, units], tokens [units]) of one point's seeds (`resampling_units`);
    no units when the seeds' windows differ."""
    layouts = [[(w["document"], w["tokens"]) for w in r["perplexity_windows"]] for r in records]
    if not layouts[0] or any(layout != layouts[0] for layout in layouts):
        return "", np.zeros((0, 0)), np.zeros(0)
    units = [resampling_units([Window(**w) for w in r["perplexity_windows"]]) for r in records]
    return units[0][0], np.array([nll for _, nll, _ in units]), np.array(units[0][2], dtype=float)


def _fields(prefix: str, result: Optional[PairedDifference]) -> dict:
    if result is None:
        return {f"{prefix}_diff": np.nan, f"{prefix}_low": np.nan, f"{prefix}_high": np.nan, f"{prefix}_resolved": None}
    return {f"{prefix}_diff": result.difference, f"{prefix}_low": result.low, f"{prefix}_high": result.high,
            f"{prefix}_resolved": result.excludes_zero}


def compare_pair(a: list[dict], b: list[dict], seed: int = 0) -> dict:
    """One pair's row: a and b are the outcome records of each side's seeds (one record a side:
    scipy's paired bootstrap; more: seeds and documents resampled, `two_stage_paired_difference`)."""
    seeded = len(a) > 1 or len(b) > 1
    accuracy_a, ids_a = accuracy_by_seed(a)
    accuracy_b, ids_b = accuracy_by_seed(b)
    accuracy = None
    if ids_a and ids_a == ids_b:
        if seeded:
            accuracy = two_stage_paired_difference(accuracy_a, accuracy_b, seed=seed)
        else:
            accuracy = paired_difference({t: dict(zip(ids_a[t], accuracy_a[t][0])) for t in ids_a},
                                         {t: dict(zip(ids_b[t], accuracy_b[t][0])) for t in ids_b}, seed)
    unit, nll_a, tokens = perplexity_by_seed(a)
    unit_b, nll_b, tokens_b = perplexity_by_seed(b)
    perplexity = None
    if unit and unit == unit_b and np.array_equal(tokens, tokens_b):
        if seeded:
            perplexity = two_stage_paired_difference({unit: nll_a}, {unit: nll_b}, {unit: tokens}, seed)
        else:
            perplexity = paired_ratio_difference(nll_a[0], nll_b[0], tokens, seed)
    return {"documents": accuracy.documents if accuracy else 0, **_fields("acc", accuracy),
            "ppl_unit": unit if perplexity else "", "ppl_units": len(tokens) if perplexity else 0,
            **_fields("log_ppl", perplexity)}


def comparison_table(frame: pd.DataFrame, axis: str = "predictor", seed: int = 0) -> pd.DataFrame:
    """Every pair along `axis` (a key of results.COMPARISON_AXES) of the evaluation rows of
    `frame` (report.table.load_rows: rows with `outcomes`, `results_file` and the pair keys)."""
    if axis not in COMPARISON_AXES:
        raise ValueError(f"axis must be one of {sorted(COMPARISON_AXES)}, got {axis!r}")
    key = f"pair_key/{axis}"
    needed = {key, "outcomes", "results_file"}
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


MATCHED_COLUMNS = ["a", "b", "sparsity_a", "sparsity_b", "bytes_a", "bytes_b", "documents", "acc_diff", "acc_low",
                   "acc_high", "acc_resolved", "ppl_unit", "ppl_units", "log_ppl_diff", "log_ppl_low", "log_ppl_high",
                   "log_ppl_resolved"]


def matched_bytes_table(frame: pd.DataFrame, seed: int = 0, tolerance: float = BYTES_TOLERANCE,
                        window: float = BYTES_WINDOW) -> pd.DataFrame:
    """Pairs at matched bytes: for two lines a and b of one comparison group (configs equal but
    for the selectors), each point of a against b's point of the lowest bytes fraction in
    [a's - `tolerance`, a's + `window`] (b reads about as many bytes or more): the same paired
    differences as `comparison_table`, a - b. A resolved negative log-perplexity difference
    says a is better at no more bytes."""
    needed = {"pair_key/predictor", "outcomes", "results_file", "bytes_fraction"}
    if not needed <= set(frame):
        return pd.DataFrame(columns=MATCHED_COLUMNS)
    evaluated = frame[(frame["stage"] == "evaluate") & (frame["predictor"] != "dense")]
    evaluated = evaluated.dropna(subset=list(needed)).assign(line=lambda f: distinct_lines(f))
    rows = []
    for _, group in evaluated.groupby("pair_key/predictor"):
        lines = {}  # line -> [(sparsity, mean bytes fraction, its seeds' outcome records)], by bytes
        for (line, level), points in group.groupby(["line", "sparsity"]):
            seeds = points.drop_duplicates("outcomes")
            lines.setdefault(line, []).append((level, float(seeds["bytes_fraction"].mean()),
                                               [_read(r) for r in seeds.to_dict("records")]))
        for a, b in ((a, b) for a in lines for b in lines if a != b):
            ordered = sorted(lines[b], key=lambda p: p[1])
            for level, fraction, records in lines[a]:
                matched = [p for p in ordered if fraction - tolerance <= p[1] <= fraction + window]
                if not matched:
                    continue
                other_level, other_fraction, other_records = matched[0]
                rows.append({"a": a, "b": b, "sparsity_a": level, "sparsity_b": other_level, "bytes_a": fraction,
                             "bytes_b": other_fraction, **compare_pair(records, other_records, seed)})
    return pd.DataFrame(rows, columns=MATCHED_COLUMNS)
