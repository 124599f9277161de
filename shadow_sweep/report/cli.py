"""`shadow-sweep report <sweep dir or results.jsonl>... [--out DIR] [--compare AXIS]`: print the
table (means with 95% CIs), the paired comparisons along AXIS (predictor, criterion or update),
the best selection at each bytes fraction and the pairs at matched bytes; write report.csv,
comparisons.csv, best_at_bytes.csv, matched_bytes.csv and the PNG curves."""

import argparse
from pathlib import Path

from shadow_sweep.report.bytes import best_at_bytes, bytes_points, matched_summary
from shadow_sweep.report.compare import comparison_table, matched_bytes_table
from shadow_sweep.report.plots import draw_curves
from shadow_sweep.report.table import load_rows, results_files, summary_table
from shadow_sweep.report.tracking import log_report
from shadow_sweep.results import COMPARISON_AXES, ResultsFile


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="shadow-sweep report", description=__doc__)
    parser.add_argument("paths", nargs="+", help="sweep folders (searched for results.jsonl) or results files")
    parser.add_argument("--out", type=Path, help="where report.csv and the PNGs go (default: <first path>/report)")
    parser.add_argument("--compare", choices=sorted(COMPARISON_AXES), default="predictor",
                        help="the axis whose values are compared in pairs (default: predictor)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap CIs")
    parser.add_argument("--wandb-project", help="also log the tables and figures to this W&B project as one run "
                                                "(mode: WANDB_MODE, else offline)")
    args = parser.parse_args(argv)
    first = Path(args.paths[0])
    out = args.out or (first.parent if first.is_file() else first) / "report"
    rows = load_rows(args.paths)
    table = summary_table(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    comparisons = comparison_table(rows, args.compare, args.seed)
    print(f"\n{len(comparisons)} paired comparisons along {args.compare} (a - b, 95% bootstrap CI; "
          f"resolved: the CI excludes 0)")
    if len(comparisons):
        print(comparisons.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    best = best_at_bytes(bytes_points(table))
    if len(best):
        print("\nbest deployable selection at each bytes fraction (log token perplexity interpolated "
              "linearly in the bytes fraction along each line, never beyond its points)")
        print(best.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    matched = matched_bytes_table(rows, args.seed)
    if len(matched):
        print(f"\n{len(matched)} pairs at matched bytes (each point of row a against column b's cheapest point "
              "reading its bytes fraction -0.02..+0.1): better/worse/unresolved in log token perplexity "
              "(95% paired CI; every pair in matched_bytes.csv)")
        print(matched_summary(matched).to_string())
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "report.csv", index=False)
    comparisons.to_csv(out / "comparisons.csv", index=False)
    best.to_csv(out / "best_at_bytes.csv", index=False)
    matched.to_csv(out / "matched_bytes.csv", index=False)
    figures = draw_curves(table, out)
    for path in figures:
        print(f"wrote {path}")
    if args.wandb_project:
        print(f"W&B run: {log_report(args.wandb_project, out, table, comparisons, figures)}")
    print(f"wrote {out / 'report.csv'}")
    problems = [line for file in results_files(args.paths) for line in ResultsFile(file).problems()]
    if problems:
        print(f"\n{len(problems)} problem(s) in the results (their points are not in the table):")
        print("\n".join(f"  {line}" for line in problems))
