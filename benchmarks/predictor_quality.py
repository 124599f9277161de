"""Predictor quality against cost: validation Spearman and top-k recall at a sparsity level,
and multiply-adds per token as a share of the model's, for predictors and widths on the same
traces (collected once, cached). Usage (from the repository root):

    .venv/bin/python benchmarks/predictor_quality.py --criteria plainact l2_norm --examples-per-task 64 \
        --predictors shadowllm dejavu --widths 128 256 512 1024
"""

import argparse
from pathlib import Path

import pandas as pd

from shadow_sweep.cache import StageCache
from shadow_sweep.models.loading import load_model
from shadow_sweep.predictors.stage import training_data
from shadow_sweep.selectors.registry import spec
from shadow_sweep.sweep.compose import compose_config
from shadow_sweep.sweep.stages import fit_stage
from shadow_sweep.traces.stage import traces_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--criteria", nargs="+", default=["plainact", "l2_norm"])
    parser.add_argument("--predictors", nargs="+", default=["shadowllm", "dejavu", "static", "random"])
    parser.add_argument("--widths", nargs="+", type=int, default=[0], help="0: the default rule")
    parser.add_argument("--bottleneck", default="null", help="null (width // 4), 0 (none) or a rank")
    parser.add_argument("--examples-per-task", type=int, default=64)
    parser.add_argument("--level", type=float, default=0.5)
    parser.add_argument("--overrides", nargs="*", default=[], help="more Hydra overrides")
    args = parser.parse_args()
    rows = []
    loaded = None
    for criterion in args.criteria:
        for predictor in args.predictors:
            widths = args.widths if spec(predictor).network is not None else [0]
            for width in widths:
                overrides = [f"model={args.model}", f"criterion={criterion}", f"predictor={predictor}",
                             f"calibration.examples_per_task={args.examples_per_task}",
                             f"predictor.width={width or 'null'}", f"predictor.bottleneck={args.bottleneck}",
                             f"sparsity.level={args.level}", *args.overrides]
                cfg = compose_config(overrides)
                cache = StageCache(Path(cfg.paths.cache_dir))
                loaded = loaded or load_model(cfg.model, cache)
                traces, _ = traces_for(cfg, loaded, cache)
                fitted, report = fit_stage(cfg, loaded, traces, cache, predictor)  # quality at the level, cost
                rows_used = training_data(cfg, traces)  # per-token samples, or per-example rows
                quality = cost = report
                rows.append({"criterion": criterion, "predictor": predictor, "examples": len(traces),
                             "rows": len(rows_used.head_scores),
                             "width": cost.get("predictor_width", 0), "rank": cost.get("predictor_bottleneck", 0),
                             "params": cost["predictor_parameters"], "macs_per_token": cost["predictor_macs_per_token"],
                             "macs_%_model": cost["predictor_macs_percent_of_model"],
                             **{k: quality.get(k, float("nan")) for k in ("heads_spearman_mean", "heads_recall_mean",
                                                                        "neurons_spearman_mean", "neurons_recall_mean")},
                             "val_loss": fitted.metrics.get("validation_loss", float("nan"))})
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
