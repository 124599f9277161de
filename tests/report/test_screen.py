"""The job's first screen: every point on one line of at most 120 columns, its numbers the
summary table's."""

import pandas as pd
import pytest

from shadow_sweep.report.screen import WIDTH, first_screen, realised_sparsity, screen_table


def _table() -> pd.DataFrame:
    """A summary table as report.table gives it: many task, CI, bytes and latency columns."""
    long_line = "shadowllm x plainact dense_positions=4 allocation=greedy target_norm=rank ranking=global"
    rows = []
    for line, level, kept in (("dense", 0.0, 1.0), (long_line, 0.5, 0.52), ("teal", 0.7, 0.31)):
        row = {"line": line, "sparsity": level, "update": "per_token", "acc_mean": 0.5123456, "acc_mean_ci95": 0.0412,
               "token_perplexity": 21.3456, "token_perplexity_low": 19.81234, "token_perplexity_high": 23.0219,
               "bytes_fraction": 0.61789, "kept/attention_input": 1.0, "kept/head_context": 1.0,
               "kept/mlp_input": kept, "kept/neuron_activation": kept}
        for task in ("copa", "piqa", "arc_easy", "hellaswag", "winogrande", "openbookqa", "rte"):
            row[f"acc/{task}"] = 0.5
            row[f"acc_norm/{task}"] = 0.5
        for mode in ("per_token", "per_sequence"):
            row[f"ms_per_token/{mode}"] = 12.345 if mode == "per_token" else 99.0
            row[f"speedup_vs_fastest_dense/{mode}"] = 1.2345
            row[f"floor_ms_per_token/{mode}"] = 3.0
        rows.append(row)
    return pd.DataFrame(rows)


def test_every_point_is_one_line_within_the_width_with_the_tables_numbers():
    table = _table()
    assert len(table.to_string(index=False).splitlines()[0]) > 3 * WIDTH  # what the job printed before
    text = first_screen(table, "per_token")
    lines = text.splitlines()
    assert len(lines) == 1 + len(table) and max(map(len, lines)) <= WIDTH
    sparse = lines[2]
    assert "0.50 (0.48)" in sparse and "0.512 +- 0.041" in sparse and "21.35 [19.81, 23.02]" in sparse
    assert "0.618" in sparse and "12.35" in sparse and "1.23" in sparse and "99" not in sparse
    assert screen_table(table, "per_sequence").loc[0, "ms/token"] == "99.00"
    dense_only = table.assign(**{"ms_per_token/dense": [8.5, None, None]})
    dense_only.loc[0, ["ms_per_token/per_token", "ms_per_token/per_sequence"]] = None
    assert list(screen_table(dense_only, "per_token")["ms/token"]) == ["8.50", "12.35", "12.35"]


def test_realised_sparsity_is_over_the_thinned_slots():
    row = pd.Series({"kept/mlp_input": 0.4, "kept/neuron_activation": 0.6, "kept/head_context": 1.0})
    assert realised_sparsity(row) == pytest.approx(0.5)
    assert realised_sparsity(pd.Series({"kept/mlp_input": 1.0})) == 0.0
    assert realised_sparsity(pd.Series({"acc_mean": 0.5})) is None
