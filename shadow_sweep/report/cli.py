"""`shadow-sweep report <sweep dir or results.jsonl>... [--out DIR]`: print the table, write
report.csv and the PNG curves."""

import argparse
from pathlib import Path

from shadow_sweep.report.plots import draw_curves
from shadow_sweep.report.table import load_rows, summary_table


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="shadow-sweep report", description=__doc__)
    parser.add_argument("paths", nargs="+", help="sweep folders (searched for results.jsonl) or results files")
    parser.add_argument("--out", type=Path, help="where report.csv and the PNGs go (default: <first path>/report)")
    args = parser.parse_args(argv)
    first = Path(args.paths[0])
    out = args.out or (first.parent if first.is_file() else first) / "report"
    table = summary_table(load_rows(args.paths))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "report.csv", index=False)
    for path in draw_curves(table, out):
        print(f"wrote {path}")
    print(f"wrote {out / 'report.csv'}")
