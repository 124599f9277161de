"""How fast kept weight rows stream on this machine: the reason behind x_floor.

A batch-1 step is bound by the bytes it reads, but scattered rows do not stream like one
long read: the CPU's prefetchers fetch past each kept row's end. This script reads every
layer's MLP weights of a model (any Hydra override: model=qwen2.5-0.5b-shape) the way the
decode kernels do, at several kept fractions of random neurons, and prints the useful bytes
per second against the read probe of decode.traffic measured in the same run:

    .venv/bin/python benchmarks/row_streaming.py 'bench.levels=[0.0,0.3,0.5,0.7]' bench.repeats=7

- `row_major`: up and gate rows and the transposed down rows in three separate [I, D]
  matrices (one row of D elements per neuron and matrix: the layout before issue 15);
- `neuron_major`: each neuron's up, gate and down rows adjacent ([I, parts, D], the decode
  path's layout), one pass per kept neuron (kernels/decode_step.cpp: neuron_major_mlp).
"""

import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from shadow_sweep.cache import StageCache
from shadow_sweep.decode.engine import SparseDecoder
from shadow_sweep.decode.families import ACTIVATIONS
from shadow_sweep.decode.fused import build_dir, cpp_kernels
from shadow_sweep.decode.traffic import read_bandwidth
from shadow_sweep.models.loading import load_model
from shadow_sweep.sweep.compose import compose_config
from shadow_sweep.validation import validate


def row_major_mlp(kernels, up: torch.Tensor, gate: torch.Tensor, down_t: torch.Tensor, rows: torch.Tensor,
                  h: torch.Tensor) -> torch.Tensor:
    hidden = torch.nn.functional.silu(kernels.gather_gemv(gate, rows, h)) * kernels.gather_gemv(up, rows, h)
    return kernels.gather_transposed_gemv(down_t, rows, hidden)


def main(overrides: list[str]) -> None:
    cfg = compose_config(["bench=quick"] + overrides)
    validate(cfg)
    torch.set_num_threads(cfg.bench.threads)
    loaded = load_model(cfg.model, StageCache(Path(cfg.paths.cache_dir)))
    kernels = cpp_kernels(build_dir(cfg.paths.cache_dir))
    decoder = SparseDecoder(loaded)
    neuron_major = [w.mlp for w in decoder.dense]
    separate = [(w.up.contiguous(), w.gate.contiguous(), w.down.contiguous()) for w in decoder.dense]
    h = torch.randn(neuron_major[0].shape[2])
    neurons = neuron_major[0].shape[0]
    generator = torch.Generator().manual_seed(cfg.bench.seed)
    times = {}
    for _ in range(cfg.bench.repeats):
        for level in cfg.bench.levels:
            kept = round((1 - level) * neurons)
            rows = [torch.randperm(neurons, generator=generator)[:kept].sort().values for _ in neuron_major]
            layouts = {
                "row_major": lambda: [row_major_mlp(kernels, *w, r, h) for w, r in zip(separate, rows)],
                "neuron_major": lambda: [kernels.neuron_major_mlp(w, r, h, ACTIVATIONS["silu"])
                                         for w, r in zip(neuron_major, rows)]}
            for layout, run in layouts.items():
                began = time.perf_counter()
                run()
                times.setdefault((layout, level), []).append(time.perf_counter() - began)
    bandwidth = read_bandwidth(torch.device("cpu"))
    layer_bytes = neuron_major[0].numel() * neuron_major[0].element_size() * len(neuron_major)
    records = []
    for (layout, level), seconds in times.items():
        read = layer_bytes * round((1 - level) * neurons) / neurons
        median = statistics.median(seconds)
        records.append({"layout": layout, "sparsity": level, "MB": read / 1e6, "ms": 1000 * median,
                        "GB_per_s": read / median / 1e9, "of_probe": read / median / bandwidth})
    print(f"{loaded.name}: {len(neuron_major)} layers' MLPs, {neurons} neurons, random kept neurons; "
          f"probe {bandwidth / 1e9:.1f} GB/s at {cfg.bench.threads} threads; median of {cfg.bench.repeats}")
    table = pd.DataFrame(records).sort_values(["sparsity", "layout"])
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main(sys.argv[1:])
