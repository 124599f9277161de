"""Quality at matched bytes: the best line at each bytes fraction (log perplexity interpolated
by hand here), pairs of points at matched bytes from the outcome files, the figure."""

import math

import numpy as np
import pandas as pd
import pytest

from shadow_sweep.evaluation.outcomes import write_outcomes
from shadow_sweep.report.bytes import best_at_bytes, matched_summary
from shadow_sweep.report.compare import matched_bytes_table
from shadow_sweep.report.plots import draw_curves
from shadow_sweep.report.table import load_rows, summary_table
from shadow_sweep.results import ResultsFile
from tests.report.test_compare import _record


def _line(name: str, points: list[tuple[float, float]], deployable: bool = True) -> list[dict]:
    return [{"line": name, "sparsity": 0.1 * (i + 1), "bytes_fraction": b, "token_perplexity": p,
             "deployable": deployable} for i, (b, p) in enumerate(points)]


def test_the_best_line_at_each_fraction_interpolates_log_perplexity_within_each_line():
    rows = (_line("dense", [(1.0, 20.0)]) + _line("a", [(0.6, 30.0), (0.8, 22.0)])
            + _line("b", [(0.7, 25.0), (0.9, 21.0)]) + _line("oracle", [(0.5, 20.5)], deployable=False))
    best = best_at_bytes(pd.DataFrame(rows), step=0.1).set_index("bytes_fraction")
    assert list(best.index) == [0.6, 0.7, 0.8, 0.9]  # from the lowest deployable point (not the oracle) below dense
    assert best.loc[0.6, "best"] == "a" and pd.isna(best.loc[0.6, "runner_up"])  # b starts at 0.7
    a_at_07 = math.sqrt(30.0 * 22.0)  # halfway in log between a's two points
    assert best.loc[0.7, "best"] == "b" and best.loc[0.7, "runner_up"] == "a"
    assert best.loc[0.7, "runner_up_perplexity"] == pytest.approx(a_at_07)
    b_at_08 = math.exp((math.log(25.0) + math.log(21.0)) / 2)
    assert best.loc[0.8, "best"] == "a" and best.loc[0.8, "token_perplexity"] == pytest.approx(22.0)
    assert best.loc[0.8, "runner_up"] == "b" and best.loc[0.8, "runner_up_perplexity"] == pytest.approx(b_at_08)
    a_at_09 = math.exp(np.interp(0.9, [0.8, 1.0], [math.log(22.0), math.log(20.0)]))  # towards dense
    assert best.loc[0.9, "best"] == "a" and best.loc[0.9, "token_perplexity"] == pytest.approx(a_at_09)
    assert best.loc[0.9, "runner_up_perplexity"] == pytest.approx(21.0)


@pytest.fixture()
def at_bytes(tmp_path):
    rng = np.random.default_rng(2)
    results = ResultsFile(tmp_path / "sweep" / "results.jsonl")
    points = [("dense", 0.0, 1.0, 0.8, 3.0), ("teal", 0.5, 0.62, 0.78, 3.1), ("teal", 0.7, 0.45, 0.7, 3.6),
              ("dejavu", 0.5, 0.66, 0.6, 4.0), ("dejavu", 0.3, 0.80, 0.75, 3.3)]
    for predictor, level, fraction, accuracy, nll in points:
        entry = tmp_path / "cache" / f"{predictor}-{level}"
        entry.mkdir(parents=True)
        row = {"job_key": predictor, "stage": "evaluate", "predictor": predictor, "sparsity": level,
               "update": "per_token", "criterion": "l2_norm", "uses_criterion": predictor == "dejavu",
               "model": "m", "config_key": predictor, "pair_key/predictor": "same", "bytes_fraction": fraction,
               "acc_mean": accuracy, "acc_mean_stderr": 0.04, "token_perplexity": float(np.exp(nll)),
               "token_perplexity_low": float(np.exp(nll) - 1), "token_perplexity_high": float(np.exp(nll) + 1),
               "deployable": True, "line_key": predictor}
        row["outcomes"] = results.keep_outcomes(write_outcomes(_record(rng, accuracy, nll), entry))
        results.append([row])
    return tmp_path / "sweep"


def test_pairs_at_matched_bytes_compare_a_point_with_the_cheapest_point_of_about_its_bytes(at_bytes):
    table = matched_bytes_table(load_rows([at_bytes]))
    pairs = {(r.a, r.sparsity_a, r.b, r.sparsity_b) for r in table.itertuples()}
    # teal 0.5 (0.62) meets dejavu 0.5 (0.66), the cheapest dejavu point within -0.02..+0.1 of its bytes;
    # teal 0.7 (0.45) meets none (0.66 is 0.21 more); no teal point reads dejavu's 0.66 - 0.02 or 0.80 - 0.02
    assert ("teal", 0.5, "dejavu x l2_norm", 0.5) in pairs and not any(p[:2] == ("teal", 0.7) for p in pairs)
    assert ("dejavu x l2_norm", 0.3, "teal", 0.5) not in pairs  # teal reads fewer bytes: no match
    teal_vs_dejavu = table[(table.a == "teal") & (table.sparsity_a == 0.5)].iloc[0]
    assert teal_vs_dejavu.log_ppl_high < 0 and teal_vs_dejavu.log_ppl_resolved  # 3.1 vs 4.0 nats/token
    assert teal_vs_dejavu.bytes_b >= teal_vs_dejavu.bytes_a
    counts = matched_summary(table)  # better / worse / unresolved, a (rows) against b (columns)
    assert counts.loc["teal", "dejavu x l2_norm"] == "1/0/0"


def test_the_report_draws_quality_against_bytes(at_bytes, tmp_path):
    table = summary_table(load_rows([at_bytes]))
    assert {"bytes_fraction", "deployable"} <= set(table.columns)
    assert set(table["line"]) == {"dense", "teal", "dejavu x l2_norm"}  # teal uses no criterion
    written = {p.name for p in draw_curves(table, tmp_path / "report")}
    assert "quality_vs_bytes.png" in written
