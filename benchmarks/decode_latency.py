"""Batch-1 decode latency, dense vs sparse (skipped heads and neurons never computed), with
the predictors fitted by the pipeline's own stages (cached). Any Hydra override works:

    .venv/bin/python benchmarks/decode_latency.py bench.levels=[0.3,0.5,0.7] bench.repeats=3

shadowllm and static use `criterion` (default plainact); dejavu uses l2_norm (DejaVu's).
Shape-only models (`model.source=tiny`, e.g. model=qwen2.5-0.5b-shape) get untrained
predictors of the right shapes (latency depends on shapes only). Every row has the bytes a
step reads, the floor at the bandwidth measured in the same run and x_floor, and x_tensor_read
(against a bare read of the dense step's own tensors; decode.traffic).
"""

import sys
from pathlib import Path

from shadow_sweep.cache import StageCache
from shadow_sweep.config import ModelSource
from shadow_sweep.validation import validate
from shadow_sweep.decode.benchmark import run_benchmark
from shadow_sweep.decode.fused import gather_kernels
from shadow_sweep.models.loading import load_model
from shadow_sweep.predictors.fit import untrained
from shadow_sweep.predictors.stage import predictor_for
from shadow_sweep.selectors.registry import decode_selectors, spec
from shadow_sweep.sweep.points import policy_at
from shadow_sweep.sweep.compose import compose_config
from shadow_sweep.traces.stage import traces_for


def main(overrides: list[str]) -> None:
    overrides = ["bench=default"] + overrides  # the paper's 128 + 128 tokens, 3 repeats
    cfg = compose_config(overrides)
    validate(cfg)
    cache = StageCache(Path(cfg.paths.cache_dir))
    loaded = load_model(cfg.model, cache)
    predictors = {}
    for name in cfg.bench.predictors or decode_selectors():
        criterion = "l2_norm" if name == "dejavu" else cfg.criterion.name.value
        stage_cfg = compose_config(overrides + [f"predictor={name}", f"criterion={criterion}"])
        layout = spec(name).network
        if cfg.model.source == ModelSource.tiny:
            predictors[name] = untrained(stage_cfg.predictor, loaded.shape, name, layout)
            continue
        traces, _ = traces_for(stage_cfg, loaded, cache)
        predictors[name] = predictor_for(stage_cfg, loaded, traces, cache, name, layout)[0]
    policies = {level: policy_at(cfg, level, loaded) for level in cfg.bench.levels}
    compiled = gather_kernels(cfg.bench.kernel, loaded.device, loaded.model.dtype, cfg.paths.cache_dir)
    table = run_benchmark(loaded, predictors, policies, cfg.bench, compiled)
    columns = ["path", "predictor", "update", "sparsity", "kernel", "ms_per_token", "ms_per_token_min",
               "ms_per_token_max", "speedup_vs_dense", "speedup_vs_fastest_dense", "predictor_share",
               "bytes_per_token", "floor_ms_per_token", "x_floor", "x_tensor_read"]
    first = table.iloc[0]
    print(f"read bandwidth {first.read_gb_per_s:.1f} GB/s ({first.read_gb_per_s_min:.1f}-{first.read_gb_per_s_max:.1f} "
          f"over the rounds) at {cfg.bench.threads} threads; a bare read of the dense step's tensors "
          f"{first.tensor_read_gb_per_s:.1f} GB/s; "
          f"fastest dense path: {table.fastest_dense.iloc[0]}")
    shown = table[[c for c in columns if c in table]].copy()
    shown["bytes_per_token"] = shown["bytes_per_token"] / 1e6
    print(shown.rename(columns={"bytes_per_token": "MB_per_token"}).to_string(
        index=False, float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main(sys.argv[1:])
