"""The report from results files alone (no model): paired comparisons from per-document outcome
files, seeds averaged, different configs never averaged together."""

import numpy as np
import pytest

from shadow_sweep.evaluation.outcomes import write_outcomes
from shadow_sweep.report.compare import compare_pair, comparison_table
from shadow_sweep.report.plots import draw_curves, error_bars, quality_latency_points
from shadow_sweep.report.table import load_rows, summary_table
from shadow_sweep.results import ResultsFile

DOCS = 60


def _record(rng, accuracy: float, nll_per_token: float) -> dict:
    tasks = {task: [{"doc_id": i, "acc": float(rng.random() < accuracy), "loglikelihoods": [0.0], "target": 0}
                    for i in range(DOCS)] for task in ("copa", "piqa")}
    windows = [{"document": w // 4, "nll": nll_per_token * 64 + float(rng.normal(0, 5)), "tokens": 64}
               for w in range(24)]
    return {"tasks": tasks, "perplexity_windows": windows}


def _point(tmp_path, results, rng, predictor, level, accuracy, nll, config="c", seed=0, width=256):
    entry = tmp_path / "cache" / f"{predictor}-{level}-{config}-{seed}-{width}"
    entry.mkdir(parents=True)
    record = _record(rng, accuracy, nll)
    acc = np.mean([[o["acc"] for o in docs] for docs in record["tasks"].values()])
    row = {"job_key": f"{predictor}{config}{seed}{width}", "stage": "evaluate", "predictor": predictor,
           "sparsity": level, "update": "dense" if predictor == "dense" else "per_token", "criterion": "plainact", "model": "m", "ranking": "per_layer",
           "job_predictor": predictor, "config_key": f"{predictor}-{config}-{width}", "predictor_seed": seed,
           "pair_key/predictor": f"{config}-{width}", "acc_mean": float(acc), "acc_mean_stderr": 0.04,
           "token_perplexity": float(np.exp(nll)), "token_perplexity_low": float(np.exp(nll) - 1),
           "token_perplexity_high": float(np.exp(nll) + 2)}
    row["outcomes"] = results.keep_outcomes(write_outcomes(record, entry))
    results.append([row])


@pytest.fixture()
def sweep(tmp_path):
    rng = np.random.default_rng(0)
    results = ResultsFile(tmp_path / "sweep" / "results.jsonl")
    _point(tmp_path, results, rng, "dense", 0.0, 0.8, 3.0)
    for seed in (0, 1):
        _point(tmp_path, results, rng, "shadowllm", 0.5, 0.7, 3.2, seed=seed)
    _point(tmp_path, results, rng, "dejavu", 0.5, 0.3, 4.0)
    _point(tmp_path, results, rng, "dejavu", 0.5, 0.3, 4.0, width=512)  # another config, same label
    return tmp_path / "sweep"


def test_pairs_along_the_predictor_axis_from_outcome_files(sweep):
    table = comparison_table(load_rows([sweep]), "predictor")
    pairs = {(r.a, r.b, r.sparsity, r.seeds_a) for r in table.itertuples()}
    # pairs in name order, a sparse point before dense; the dejavu of another width is its own group
    assert pairs == {("dejavu", "dense", 0.5, 1), ("dejavu", "shadowllm", 0.5, 1), ("shadowllm", "dense", 0.5, 2)}
    dejavu_vs_shadow = table[(table.a == "dejavu") & (table.b == "shadowllm")].iloc[0]
    assert dejavu_vs_shadow.documents == 2 * DOCS and dejavu_vs_shadow.ppl_units == 24
    assert dejavu_vs_shadow.ppl_unit == "windows"  # 6 documents: fewer than 10
    assert dejavu_vs_shadow.acc_low < -0.4 < dejavu_vs_shadow.acc_high and dejavu_vs_shadow.acc_resolved
    assert dejavu_vs_shadow.log_ppl_low > 0 and dejavu_vs_shadow.log_ppl_resolved


def test_an_unknown_axis_is_refused(sweep):
    with pytest.raises(ValueError, match="axis must be one of"):
        comparison_table(load_rows([sweep]), "width")


def test_seeds_average_and_other_configs_stay_apart(sweep):
    table = summary_table(load_rows([sweep])).set_index("line")
    assert table.loc["shadowllm x plainact", "seeds"] == 2
    dejavu = [line for line in table.index if line.startswith("dejavu")]
    assert len(dejavu) == 2 and all(table.loc[line, "seeds"] == 1 for line in dejavu)
    assert table.loc["dense", "acc_mean_ci95"] == pytest.approx(1.959964 * 0.04)


def test_curves_carry_the_cis_and_quality_meets_latency(sweep, tmp_path):
    results = ResultsFile(sweep / "results.jsonl")
    for predictor, update, ms in (("dense", "dense", 80.0), ("shadowllm", "per_token", 50.0)):
        results.append([{"job_key": "b", "stage": "bench", "path": "ours", "predictor": predictor, "update": update,
                         "sparsity": 0.0 if predictor == "dense" else 0.5, "criterion": "plainact", "model": "m",
                         "ranking": "per_layer", "graph": False, "ms_per_token": ms, "ms_per_token_min": ms - 2,
                         "ms_per_token_max": ms + 3, "speedup_vs_dense": 80.0 / ms,
                         "speedup_vs_fastest_dense": 80.0 / ms}])
    table = summary_table(load_rows([sweep]))
    points = quality_latency_points(table)
    assert set(zip(points["line"], points["update"])) == {("dense", "dense"), ("shadowllm x plainact", "per_token")}
    shadow = points[points["line"] == "shadowllm x plainact"].iloc[0]
    speedup = (shadow.speedup_vs_fastest_dense_min, shadow.speedup_vs_fastest_dense, shadow.speedup_vs_fastest_dense_max)
    assert speedup == (pytest.approx(80 / 53), pytest.approx(80 / 50), pytest.approx(80 / 48))
    dense = table[table["line"] == "dense"]
    below, above = error_bars(dense, "token_perplexity")  # distances to the CI's ends (fixture: 1 and 2)
    assert (below[0], above[0]) == (pytest.approx(1.0), pytest.approx(2.0))
    written = {p.name for p in draw_curves(table, tmp_path / "report")}
    assert {"accuracy_vs_sparsity.png", "quality_vs_latency.png", "latency_vs_sparsity.png"} <= written


def test_report_command_logs_its_tables_to_an_offline_wandb_run(sweep, tmp_path, monkeypatch, capsys):
    from shadow_sweep.report.cli import main
    from tests.sweep.wandb_records import read_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    main([str(sweep), "--out", str(tmp_path / "report"), "--wandb-project", "shadow-sweep-test"])
    assert "3 paired comparisons along predictor" in capsys.readouterr().out
    run = read_run(next((tmp_path / "report" / "wandb").glob("offline-run-*")))
    assert run["run"].job_type == "report" and run["summary"]["comparisons_made"] == 3
    logged = set().union(*run["history"])
    assert {"summary/_type", "comparisons/_type", "figures/accuracy_vs_sparsity/_type"} <= logged
    assert run["history"][0]["comparisons/nrows"] == 3 and run["history"][0]["comparisons/_type"] == "table-file"
    written = {"comparisons.csv", "report.csv", "accuracy_vs_sparsity.png"}
    assert written <= {p.name for p in (tmp_path / "report").iterdir()}


def test_perplexity_pairs_resample_documents_when_there_are_ten_or_more():
    rng = np.random.default_rng(1)
    windows = lambda shift: [{"document": w // 2, "nll": 64 * (3.0 + shift) + float(rng.normal(0, 5)),  # noqa: E731
                              "tokens": 64} for w in range(24)]
    a = {"tasks": {}, "perplexity_windows": windows(0.5)}
    b = {"tasks": {}, "perplexity_windows": windows(0.0)}
    row = compare_pair([a], [b])
    assert (row["ppl_unit"], row["ppl_units"]) == ("documents", 12)
    nll_a = np.array([w["nll"] for w in a["perplexity_windows"]]).reshape(12, 2).sum(1)
    nll_b = np.array([w["nll"] for w in b["perplexity_windows"]]).reshape(12, 2).sum(1)
    assert row["log_ppl_diff"] == pytest.approx((nll_a - nll_b).sum() / (24 * 64))
    assert row["log_ppl_low"] < 0.5 < row["log_ppl_high"]


def test_a_fixed_selection_meets_the_latency_it_was_timed_at():
    """A fixed selection (static) evaluated per_token is timed per_sequence (the same masks): its
    quality point takes that latency; a contextual one only its own policy's."""
    import pandas as pd

    speed = {"speedup_vs_fastest_dense/per_sequence": 1.5, "speedup_vs_fastest_dense_min/per_sequence": 1.4,
             "speedup_vs_fastest_dense_max/per_sequence": 1.6}
    table = pd.DataFrame([{"line": "static", "sparsity": 0.5, "update": "per_token", "fixed": True,
                           "token_perplexity": 30.0, **speed},
                          {"line": "shadowllm", "sparsity": 0.5, "update": "per_token", "fixed": False,
                           "token_perplexity": 25.0, **speed}])
    points = quality_latency_points(table)
    assert list(points["line"]) == ["static"]
    assert (points.speedup_vs_fastest_dense_min[0], points.speedup_vs_fastest_dense_max[0]) == (1.4, 1.6)
