"""Decode latency table: HF generate and our dense path, then every (predictor, level,
update) on the sparse path, all in one run; ratios are against our dense path of this run
and against the fastest dense path (`fastest_dense`: HF generate, ours, and on CUDA with
`bench.hf_compiled` HF generate with a static cache, which transformers compiles:
`hf_generate_compiled`, its warm-up with compilation in `compile_s`).

Every row also has the bytes a decode step reads (`bytes_per_token` and its parts, mean over
the steps; decode.traffic), the read bandwidth measured in the same run (`read_gb_per_s`), the
floor `floor_ms_per_token` = bytes / bandwidth and `x_floor` = ms_per_token / floor.

ms/token counts the new tokens after the first (the first comes from the prompt pass,
reported as prefill_ms); the predictor's and the gathers' times are inside ms/token and
also reported alone (predictor_share = predictor time / decode time; the predictor's time is
where it ran: in Python, or as the step networks of the C++ layer). On CUDA with
`bench.cuda_graphs`, every fixed-weight point (dense, per_sequence, static) is measured a
second time replaying a CUDA graph (`graph` column; its capture is inside prefill_ms);
speedup_vs_dense compares with our dense path in the same mode (eager or graph).
Repeats are the outer loop (every point once per round, the probe after each round), so
drift of a shared machine during the run reaches every point alike; HF generate runs first.
"""

import statistics
from dataclasses import dataclass, field
from typing import Optional

import pandas as pd
from tqdm.auto import tqdm
import torch

from shadow_sweep.config import BenchConfig, MaskUpdate, Prefill
from shadow_sweep.decode.engine import SparseDecoder
from shadow_sweep.decode.fused import kernel_name
from shadow_sweep.decode.generate import Generator, clock
from shadow_sweep.decode.packs import PARTS
from shadow_sweep.decode.selection import DecodeSelection
from shadow_sweep.decode.traffic import StepTraffic, read_bandwidth, tensors_read_bandwidth
from shadow_sweep.models.loading import LoadedModel


def _median(runs: list, field: str) -> float:
    return statistics.median(getattr(r, field) for r in runs)


def _spread(ms_per_token: list[float]) -> dict:
    """ms_per_token (the median over repeats) and its min and max."""
    return {"ms_per_token": statistics.median(ms_per_token), "ms_per_token_min": min(ms_per_token),
            "ms_per_token_max": max(ms_per_token)}


def _hf_generate_ms_per_token(loaded: LoadedModel, prompt: torch.Tensor, cfg: BenchConfig,
                              static_cache: bool = False) -> dict:
    """Per repeat (time for new_tokens - median time for 1 token) / (new_tokens - 1), greedy:
    its median, min and max. HF's own dynamic cache, or with `static_cache` its static cache,
    under which generate compiles the forward on CUDA (transformers' auto-compile); then both
    lengths are generated once first and that time, compilation included, is `compile_s`."""
    kwargs = {"cache_implementation": "static"} if static_cache else {}

    def timed(tokens: int) -> float:
        ids = prompt[None].to(loaded.device)
        began = clock(loaded.device)
        loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                              min_new_tokens=tokens, do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id,
                              **kwargs)
        return clock(loaded.device) - began

    began = clock(loaded.device)
    if static_cache:  # the warm-up: one compilation per static cache length timed below
        timed(cfg.new_tokens)
        timed(1)
    else:
        for _ in range(cfg.warmup):
            timed(2)
    compile_s = clock(loaded.device) - began
    full = [timed(cfg.new_tokens) for _ in range(cfg.repeats)]
    first = statistics.median(timed(1) for _ in range(cfg.repeats))
    spread = _spread([1000 * (f - first) / (cfg.new_tokens - 1) for f in full])
    return {**spread, "compile_s": compile_s} if static_cache else spread


@dataclass
class BenchPoint:
    """A sparse point of the table: a selection (decode.selection) at one level; `fields` name it
    in its row (a sweep's point fields, so that the report joins latency and quality)."""

    selection: DecodeSelection
    level: float
    fields: dict = field(default_factory=dict)


def run_benchmark(loaded: LoadedModel, points: list[BenchPoint], cfg: BenchConfig, kernels=None,
                  prefill: Prefill = Prefill.sparse, dense_fields: Optional[dict] = None) -> pd.DataFrame:
    """`points`: the sparse points to time beside HF generate and our dense path (`dense_fields`
    name it); `kernels`: decode.fused.gather_kernels(...), or None (eager); `prefill`: how every
    sparse point runs its prompt (decode.generate)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        decoder = SparseDecoder(loaded, kernels)
        g = torch.Generator().manual_seed(cfg.seed)
        prompt = torch.randint(3, loaded.model.config.vocab_size, (cfg.prompt_length,), generator=g)
        hf = {"predictor": "dense", "update": "dense", "sparsity": 0.0, "graph": False}
        rows = [{"path": "hf_generate", **hf, **_hf_generate_ms_per_token(loaded, prompt, cfg)}]
        if cfg.hf_compiled and loaded.device.type == "cuda":
            rows.append({"path": "hf_generate_compiled", **hf,
                         **_hf_generate_ms_per_token(loaded, prompt, cfg, static_cache=True)})
        graphs = [False, True] if cfg.cuda_graphs and loaded.device.type == "cuda" else [False]
        timed = [(point, graph) for point in [None] + points for graph in graphs
                 if not (graph and point is not None and point.selection.update == MaskUpdate.per_token)]
        generators = []
        for point, graph in timed:
            selection = None if point is None else point.selection
            generators.append(Generator(decoder, selection, graphs=graph, prefill=prefill))
            for _ in range(cfg.warmup):
                generators[-1].generate(prompt, 4)
        # repeats outermost: a machine's drift during the run reaches every point alike
        runs = [[] for _ in timed]
        bandwidths = []  # the probe after every round, for the same drift
        tensor_reads = []  # a bare read of the dense step's weight tensors, after every round
        for _ in tqdm(range(cfg.repeats), desc="decode benchmark repeats", leave=False):
            for point_runs, generator in zip(runs, generators):
                point_runs.append(generator.generate(prompt, cfg.new_tokens))
            bandwidths.append(read_bandwidth(loaded.device))
            tensor_reads.append(tensors_read_bandwidth(decoder.dense_tensors()))
        steps = cfg.new_tokens - 1
        for (point, graph), point_runs in zip(timed, runs):
            own = (dense_fields or {}) if point is None else point.fields
            rows.append({"path": "ours", **_point_fields(point, prefill), **own, "graph": graph,
                         "kernel": _kernel(kernels, point),
                         **_spread([1000 * r.decode_s / steps for r in point_runs]),
                         "prefill_ms": 1000 * _median(point_runs, "prefill_s"),
                         "prefill_capture_ms": 1000 * _median(point_runs, "prefill_capture_s"),
                         "predictor_ms_per_token": 1000 * _median(point_runs, "choosing_s") / steps,
                         "gather_ms_per_token": 1000 * _median(point_runs, "gather_s") / steps,
                         "prefill_gather_ms": 1000 * _median(point_runs, "prefill_gather_s"),
                         "predictor_share": _median(point_runs, "choosing_s")
                         / max(_median(point_runs, "decode_s"), 1e-12),
                         **_parts(point_runs, steps),
                         **_traffic([t for r in point_runs for t in r.traffic])})
        layouts = decoder.layout_bytes()
    finally:
        torch.set_num_threads(threads)
    table = _ratios(pd.DataFrame(rows), bandwidths, tensor_reads)
    table["layout_bytes"] = layouts
    return table


def _point_fields(point: Optional[BenchPoint], prefill: Prefill) -> dict:
    """The row fields naming a timed point (None: our dense path)."""
    if point is None:
        return {"predictor": "dense", "update": "dense", "sparsity": 0.0, "prefill": "dense"}
    selection = point.selection
    attention, mlp = selection.runtime.selection.points()
    return {"predictor": selection.label, "heads_selector": selection.runtime.selection.heads,
            "neurons_selector": selection.runtime.selection.neurons, "heads_point": attention.value,
            "neurons_point": mlp.value, "update": selection.update.value, "sparsity": point.level,
            "prefill": prefill.value}


def _kernel(kernels, point: Optional[BenchPoint]) -> str:
    """What ran the one-token steps: the kernels' name where they ran (whole layers: every
    step; row kernels: per_token rows), else sliced copies or the dense torch-ops step."""
    per_token = point is not None and point.selection.update == MaskUpdate.per_token
    if getattr(kernels, "whole_layers", False) or per_token:
        return kernel_name(kernels)  # "eager" without kernels
    return "dense" if point is None else "sliced"


def _parts(runs: list, steps: int) -> dict:
    """Where a step's time goes, ms per token (medians over repeats): the C++ layer's parts
    (decode.packs.PARTS: zero on other kernels), lm_head, and `other` (the rest: Python between
    the calls, the embedding, building the calls' arguments, the top-k of ahead selections)."""
    parts = {f"{part}_ms_per_token": 1000 * statistics.median(r.parts_s.get(part, 0.0) for r in runs) / steps
             for part in PARTS}
    parts["lm_head_ms_per_token"] = 1000 * _median(runs, "lm_head_s") / steps
    accounted = [sum(r.parts_s.values()) + r.lm_head_s + r.predictor_s + r.gather_s for r in runs]
    parts["other_ms_per_token"] = 1000 * statistics.median(r.decode_s - a for r, a in zip(runs, accounted)) / steps
    return parts


def _traffic(steps: list[StepTraffic]) -> dict:
    """Mean bytes per decode step, total and by part (decode.traffic)."""
    mean = lambda part: statistics.mean(getattr(t, part) for t in steps)  # noqa: E731
    return {"bytes_per_token": statistics.mean(t.total for t in steps), "weight_bytes_per_token": mean("weights"),
            "fixed_bytes_per_token": mean("fixed"), "kv_bytes_per_token": mean("kv_cache"),
            "predictor_bytes_per_token": mean("predictor")}


def _ratios(table: pd.DataFrame, bandwidths: list[float], tensor_reads: list[float]) -> pd.DataFrame:
    """tokens/s, the floor (bytes / the median of the rounds' read bandwidths, their spread
    kept), x_tensor_read (against the rate of a bare read of the dense step's own tensors) and
    every ratio: against our dense path in the same mode, and against the fastest dense path
    of the run (HF or ours, eager)."""
    bandwidth = statistics.median(bandwidths)
    table["tokens_per_s"] = 1000.0 / table["ms_per_token"]
    dense = table[(table.path == "ours") & (table.predictor == "dense")].set_index("graph").ms_per_token
    table["speedup_vs_dense"] = table["graph"].map(dense) / table["ms_per_token"]
    eager_dense = table[(table.predictor == "dense") & ~table.graph]
    fastest = eager_dense.loc[eager_dense.ms_per_token.idxmin()]
    table["fastest_dense"] = fastest.path
    table["speedup_vs_fastest_dense"] = fastest.ms_per_token / table["ms_per_token"]
    ours_dense = (table.path == "ours") & (table.predictor == "dense") & ~table.graph
    hf = table.path.str.startswith("hf_generate")  # reads the same weights and cache as our dense step
    for column in [c for c in table.columns if c.endswith("bytes_per_token")]:
        table.loc[hf, column] = table.loc[ours_dense, column].iloc[0]
    table["read_gb_per_s"] = bandwidth / 1e9
    table["read_gb_per_s_min"] = min(bandwidths) / 1e9
    table["read_gb_per_s_max"] = max(bandwidths) / 1e9
    table["floor_ms_per_token"] = 1000 * table["bytes_per_token"] / bandwidth
    table["x_floor"] = table["ms_per_token"] / table["floor_ms_per_token"]
    tensor_read = statistics.median(tensor_reads)
    table["tensor_read_gb_per_s"] = tensor_read / 1e9
    table["x_tensor_read"] = table["ms_per_token"] / (1000 * table["bytes_per_token"] / tensor_read)
    return table
