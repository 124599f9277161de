"""The selectors' table from sweep folders (the report's table, cut to what compares selectors):
per model, line and level the token perplexity with its 95% CI and its ratio to dense, mean
accuracy with its 95% CI half-width, the realised kept fraction per slot and the bytes
fraction (p05-p95 over tokens); then paired differences for named pairs of points, which may
come from different configs (other widths, a sink) as long as they scored the same documents:

    .venv/bin/python benchmarks/selector_table.py outputs/sweeps/selectors_smollm2 \\
        --pairs "teal@0.5 vs dejavu x l2_norm@0.5" "shadowllm x l2_norm@0.5 vs static x l2_norm@0.5"
"""

import argparse

import pandas as pd

from shadow_sweep.report.compare import compare_pair
from shadow_sweep.report.table import distinct_lines, load_rows, summary_table
from shadow_sweep.results import ResultsFile

SLOTS = ("attention_input", "head_context", "mlp_input", "neuron_activation")


def table(rows: pd.DataFrame) -> pd.DataFrame:
    summary = summary_table(rows)
    dense = summary[summary["line"] == "dense"]["token_perplexity"]
    out = pd.DataFrame({"line": summary["line"], "sparsity": summary["sparsity"],
                        "ppl": summary["token_perplexity"],
                        "ppl_ci": [f"[{lo:.3g}, {hi:.3g}]" for lo, hi in zip(summary["token_perplexity_low"],
                                                                          summary["token_perplexity_high"])],
                        "x_dense": summary["token_perplexity"] / float(dense.iloc[0]) if len(dense) else float("nan")})
    if "acc_mean" in summary:
        out["acc"] = summary["acc_mean"]
        out["acc_ci95"] = summary["acc_mean_ci95"]
    for slot in SLOTS:
        if f"kept/{slot}" in summary:
            out[f"kept/{slot}"] = summary[f"kept/{slot}"]
    if "bytes_fraction" in summary:
        out["bytes"] = summary["bytes_fraction"]
        out["bytes_p05_p95"] = [f"{lo:.3f}-{hi:.3f}" for lo, hi in zip(summary["bytes_fraction_p05"],
                                                                       summary["bytes_fraction_p95"])]
    return out


def point_records(rows: pd.DataFrame, spec: str) -> list[dict]:
    """The outcome records of the point "<line>@<level>" (one per seed)."""
    line, level = spec.rsplit("@", 1)
    chosen = rows[(rows["line"] == line) & (rows["sparsity"] == float(level))].drop_duplicates("outcomes")
    if chosen.empty:
        raise SystemExit(f"no evaluation row for {spec!r}; lines: {sorted(rows['line'].unique())}")
    return [ResultsFile(r["results_file"]).outcomes(r) for r in chosen.to_dict("records")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="sweep folders or results files")
    parser.add_argument("--pairs", nargs="*", default=[], help='"<line>@<level> vs <line>@<level>": a - b')
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = load_rows(args.paths)
    print(table(rows).to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    evaluated = rows[rows["stage"] == "evaluate"].copy()
    evaluated["line"] = distinct_lines(evaluated)
    results = []
    for pair in args.pairs:
        a, b = pair.split(" vs ")
        row = compare_pair(point_records(evaluated, a), point_records(evaluated, b), args.seed)
        results.append({"a": a, "b": b, "log_ppl_diff": row["log_ppl_diff"],
                        "log_ppl_ci": f"[{row['log_ppl_low']:.3f}, {row['log_ppl_high']:.3f}]",
                        "ppl_resolved": row["log_ppl_resolved"], "acc_diff": row["acc_diff"],
                        "acc_ci": f"[{row['acc_low']:.3f}, {row['acc_high']:.3f}]", "acc_resolved": row["acc_resolved"]})
    if results:
        print("\npaired differences a - b (95% bootstrap CIs over the same documents)")
        print(pd.DataFrame(results).to_string(index=False, float_format=lambda v: f"{v:.4g}"))


if __name__ == "__main__":
    main()
