"""Batch-1 decode latency, dense vs every selection the decode path runs (skipped work never
done), each fitted or calibrated by the pipeline's own stages (cached). Any Hydra override works:

    .venv/bin/python benchmarks/decode_latency.py 'bench.levels=[0.3,0.5,0.7]' bench.repeats=3

Selections: every selector of `bench.predictors` (empty: every one the decode path runs) alone,
and the mixes `shadowllm+cats` (ShadowLLM's heads, CATS's neurons) and `dejavu+dejavu_mlp`
where both are named; under each `bench.updates` policy it serves (empty: per_token; a fixed
selector per_sequence, the same masks). shadowllm and static use `criterion` (default plainact);
the DejaVu networks l2_norm (DejaVu's). Shape-only models (`model.source=tiny`, e.g.
model=qwen2.5-0.5b-shape) get untrained predictors of the right shapes (latency depends on
shapes only) and thresholds calibrated on their own activations. Every row has the bytes a step
reads, the floor at the bandwidth measured in the same run, x_floor, x_tensor_read (decode.traffic)
and the time shares of the predictor and the gathers; the table ends with the memory of the
extra weight layouts (input and gate points).
"""

import sys
import time
from pathlib import Path

from shadow_sweep.cache import StageCache
from shadow_sweep.config import MaskUpdate, ModelSource
from shadow_sweep.decode.benchmark import BenchPoint, run_benchmark
from shadow_sweep.decode.fused import gather_kernels
from shadow_sweep.decode.selection import DecodeSelection
from shadow_sweep.models.loading import load_model
from shadow_sweep.predictors.fit import untrained
from shadow_sweep.predictors.stage import predictor_for
from shadow_sweep.selectors.base import Need
from shadow_sweep.selectors.registry import PointSelection, decode_selectors, selection_of, selector_class, spec
from shadow_sweep.selectors.stage import statistics_for
from shadow_sweep.sweep.compose import compose_config
from shadow_sweep.sweep.points import EvaluationPoint, point_runtime
from shadow_sweep.traces.stage import traces_for
from shadow_sweep.validation import validate

MIXES = (("shadowllm", "cats"), ("dejavu", "dejavu_mlp"))
PARTS_SHOWN = ("attention_weights", "attention", "mlp_weights", "gate", "norms", "lm_head", "predictor", "gather",
               "other")
COLUMNS = ["predictor", "update", "sparsity", "ms_per_token", "ms_per_token_min", "ms_per_token_max",
           "speedup_vs_fastest_dense", "predictor_share", "bytes_per_token", "floor_ms_per_token", "x_floor",
           "x_tensor_read"]


def selections(names: list[str]) -> list[PointSelection]:
    chosen = [selection_of(name) for name in names]
    return chosen + [selection_of(heads, neurons=neurons) for heads, neurons in MIXES
                     if heads in names and neurons in names]


def fit(overrides: list[str], name: str, loaded, cache):
    """Selector `name`'s fit by the pipeline's stages (untrained on a shape-only model)."""
    criterion = "l2_norm" if name.startswith("dejavu") else compose_config(overrides).criterion.name.value
    cfg = compose_config(overrides + [f"predictor={name}", f"criterion={criterion}"])
    if cfg.model.source == ModelSource.tiny:
        return untrained(cfg.predictor, loaded.shape, name, spec(name).network)
    traces, _ = traces_for(cfg, loaded, cache)
    return predictor_for(cfg, loaded, traces, cache, name, spec(name).network)[0]


def main(overrides: list[str]) -> None:
    overrides = ["bench=default"] + overrides  # the paper's 128 + 128 tokens, 3 repeats
    cfg = compose_config(overrides)
    validate(cfg)
    cache = StageCache(Path(cfg.paths.cache_dir))
    loaded = load_model(cfg.model, cache)
    timed = selections(list(cfg.bench.predictors) or decode_selectors())
    needs = {name: selector_class(name).needs(cfg) for s in timed for name in s.names()}
    fitted = {name: fit(overrides, name, loaded, cache) for name, n in needs.items() if Need.traces in n}
    statistics = None
    if any(Need.statistics in n for n in needs.values()):
        statistics, _ = statistics_for(cfg, loaded, cache)
    updates = [MaskUpdate(u) for u in cfg.bench.updates] or [MaskUpdate.per_token]
    points = []
    for selection in timed:
        own = {name: fitted[name] for name in selection.names() if name in fitted}
        for update in selection.decode_updates(updates):
            for level in cfg.bench.levels:
                runtime = point_runtime(cfg, loaded, EvaluationPoint(selection, level, own), statistics, update)
                points.append(BenchPoint(DecodeSelection(runtime), level))
    compiled = gather_kernels(cfg.bench.kernel, loaded.device, loaded.model.dtype, cfg.paths.cache_dir)
    table = run_benchmark(loaded, points, cfg.bench, compiled)
    first = table.iloc[0]
    print(f"read bandwidth {first.read_gb_per_s:.1f} GB/s ({first.read_gb_per_s_min:.1f}-{first.read_gb_per_s_max:.1f} "
          f"over the rounds) at {cfg.bench.threads} threads; a bare read of the dense step's tensors "
          f"{first.tensor_read_gb_per_s:.1f} GB/s; fastest dense path: {table.fastest_dense.iloc[0]}")
    shown = table[["path"] + [c for c in COLUMNS if c in table]].copy()
    shown["bytes_per_token"] = shown["bytes_per_token"] / 1e6
    print(shown.rename(columns={"bytes_per_token": "MB_per_token"}).to_string(
        index=False, float_format=lambda v: f"{v:.3g}"))
    parts = ["predictor", "update", "sparsity"] + [f"{part}_ms_per_token" for part in PARTS_SHOWN]
    print("where a step's time goes, ms per token (the C++ layer's parts, then lm_head, the predictor in")
    print("Python or as step networks, the gathers, and the rest):")
    print(table[table.path == "ours"][parts].rename(columns=lambda c: c.replace("_ms_per_token", "")).to_string(
        index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"extra weight layouts (input and gate points): {first.layout_bytes / 1e6:.0f} MB")
    out = Path(cfg.paths.cache_dir).parent / "bench" / f"decode_latency-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    print(f"every column: {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
