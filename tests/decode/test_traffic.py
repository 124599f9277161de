"""The bytes a decode step reads equal kept units x row bytes plus the fixed parts, computed
here from the tiny models' known shapes; the benchmark reports them with the floor."""

import pytest
import torch

from shadow_sweep.config import BenchConfig, BenchKernel, Prefill, Ranking, SparsityConfig
from shadow_sweep.decode.benchmark import BenchPoint, _hf_generate_ms_per_token, run_benchmark
from shadow_sweep.decode.engine import SparseDecoder
from shadow_sweep.decode.fused import TorchGatherKernels, gather_kernels
from shadow_sweep.decode.generate import Generator
from shadow_sweep.decode.selection import DENSE_PLAN, DecodeSelection
from shadow_sweep.decode.traffic import StepRecord, read_bandwidth, tensors_read_bandwidth
from shadow_sweep.sparsity.policy import SparsityPolicy
from tests.conftest import load_tiny
from tests.decode.test_decode import _prompt, masked_path, static_selection
from tests.selectors.helpers import runtime_for, tiny_statistics

FP32 = 4


def expected_bytes(name: str, shape, heads: torch.Tensor, neurons: torch.Tensor, context: int,
                   dense_kv: bool, predictor: int = 0) -> int:
    """From the configs in conf/model/: tiny-llama (D 64, V 384, GQA 4 heads on 2 groups of d 16,
    96 neurons, RMS norms without bias, untied lm_head); tiny-opt (D 64, V 384, 4 heads of 16,
    128 neurons, biases on every projection, LayerNorms with bias, lm_head tied)."""
    hidden, vocab, d = 64, 384, 16
    opt = name == "tiny-opt"
    total = hidden + vocab * hidden  # the embedding row, lm_head
    total += (2 * shape.num_layers + 1) * hidden * (2 if opt else 1)  # norms (weight, and bias for OPT)
    for layer in range(shape.num_layers):
        kept_heads = heads[layer].nonzero().squeeze(1)
        groups = len(torch.unique(kept_heads // shape.queries_per_kv))
        q = len(kept_heads) * d
        n = int(neurons[layer].sum())
        kv_rows = (shape.num_kv_heads if dense_kv else groups) * d
        total += 2 * q * hidden + 2 * kv_rows * hidden  # q, o; k, v
        total += (2 if opt else 3) * n * hidden  # up (fc1), gate (Llama), down (fc2)
        if opt:
            total += q + 2 * kv_rows + hidden + n + hidden  # biases: q, k, v, o (all), fc1 (kept), fc2 (all)
        total += 2 * context * groups * d  # K and V read by the kept heads
    return total * FP32 + predictor


def one_step(decoder: SparseDecoder, weights: list, dense_kv: bool, context: int) -> StepRecord:
    """One token at position context - 1 through every layer with `weights` -> what it kept."""
    s = decoder.shape
    caches = decoder.new_cache(context, decoder.dense if dense_kv else weights)
    for cache in caches:
        cache.length = context - 1
    positions = torch.tensor([context - 1])
    x = decoder.family.embed(torch.tensor([5]), positions)
    plans = [DENSE_PLAN] * s.num_layers
    decoder.run_layers(0, s.num_layers, x, positions, weights, caches, decoder.family.rotation(positions, x), dense_kv,
                       plans)
    return decoder.record(weights, plans, dense_kv)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-opt"])
def test_a_sliced_or_indexed_step_reads_kept_rows_plus_the_fixed_parts(name, session_cache):
    loaded = load_tiny(name, session_cache)
    s = loaded.shape
    decoder = SparseDecoder(loaded, TorchGatherKernels())
    g = torch.Generator().manual_seed(3)
    heads = torch.rand(s.num_layers, s.num_heads, generator=g) > 0.5
    neurons = torch.rand(s.num_layers, s.num_neurons, generator=g) > 0.5
    heads[:, 0] = True
    kept = [(heads[layer].nonzero().squeeze(1), neurons[layer].nonzero().squeeze(1)) for layer in range(s.num_layers)]
    sliced = [decoder.sliced(layer, *kept[layer]) for layer in range(s.num_layers)]
    indexed = [decoder.indexed(layer, *kept[layer]) for layer in range(s.num_layers)]
    for weights, dense_kv in ((sliced, False), (sliced, True), (indexed, True)):
        traffic = decoder.step_traffic(one_step(decoder, weights, dense_kv, 20), 20, predictor_bytes=123)
        assert traffic.total == expected_bytes(name, s, heads, neurons, 20, dense_kv, 123)
    everything = decoder.step_traffic(one_step(decoder, decoder.dense, False, 20), 20, 0)
    all_heads = torch.ones_like(heads)
    assert everything.total == expected_bytes(name, s, all_heads, torch.ones_like(neurons), 20, False)


def test_a_decode_run_counts_every_step_at_its_context_length(session_cache):
    loaded = load_tiny("tiny-llama", session_cache)
    s = loaded.shape
    policy = SparsityPolicy(SparsityConfig(level=0.5, ranking=Ranking.per_layer), s)
    heads, neurons = policy.masks(torch.rand(1, s.num_layers, s.num_heads), torch.rand(1, s.num_layers, s.num_neurons))
    run = Generator(SparseDecoder(loaded), static_selection(loaded, heads[0], neurons[0])).generate(_prompt(), 5)
    assert [t.total for t in run.traffic] == [expected_bytes("tiny-llama", s, heads[0], neurons[0], 11 + step, False)
                                              for step in range(4)]
    selection = DecodeSelection(runtime_for(loaded, "shadowllm"))
    net = selection.runtime.selectors[0].fitted.net
    per_token = Generator(SparseDecoder(loaded), selection).generate(_prompt(), 3)
    assert all(t.predictor == sum(p.numel() * FP32 for p in net.parameters()) for t in per_token.traffic)


@pytest.mark.parametrize("name", ["teal", "cats"])
def test_a_step_at_the_input_or_the_gate_reads_what_its_point_keeps(name, session_cache, embedded_cache):
    """tiny-llama (D 64, H 4 and KV 2 of d 16, I 96, no biases), per token: teal reads the kept
    columns of every linear, (H + 2 KV) d a + D c + 2 I m + D n elements a layer; cats the
    attention and the gate dense, then n up and n down rows; a and c, m and n the channels and
    neurons the accuracy path kept at that token."""
    loaded = load_tiny("tiny-llama", session_cache)
    statistics = tiny_statistics(loaded)
    kernels = gather_kernels(BenchKernel.fused_layer, loaded.device, torch.float32, embedded_cache.root)
    run = Generator(SparseDecoder(loaded, kernels), DecodeSelection(runtime_for(loaded, name, statistics=statistics))
                    ).generate(_prompt(), 6)
    _, counts = masked_path(loaded, runtime_for(loaded, name, statistics=statistics), _prompt(), run.tokens,
                            Prefill.sparse)
    hidden, heads, groups, d, neurons = 64, 4, 2, 16, 96
    fixed = hidden + 384 * hidden + (2 * loaded.shape.num_layers + 1) * hidden
    for step, traffic in enumerate(run.traffic):
        kept = counts[len(_prompt()) + step]  # [L, 4]
        attention_input, head_context, mlp_input, neuron_activation = kept.unbind(1)
        if name == "teal":
            per_layer = ((heads + 2 * groups) * d * attention_input + hidden * head_context
                         + 2 * neurons * mlp_input + hidden * neuron_activation)
        else:
            per_layer = (2 * heads * d * hidden + 2 * groups * d * hidden + neurons * hidden
                         + 2 * neuron_activation * hidden)
        assert traffic.weights == FP32 * int(per_layer.sum())
        assert traffic.fixed == FP32 * fixed
        assert traffic.kv_cache == FP32 * loaded.shape.num_layers * 2 * (len(_prompt()) + step + 1) * groups * d


def test_the_benchmark_reports_bytes_floor_and_the_fastest_dense_path(session_cache):
    loaded = load_tiny("tiny-llama", session_cache)
    s = loaded.shape
    heads = torch.rand(s.num_layers, s.num_heads)
    neurons = torch.rand(s.num_layers, s.num_neurons)
    cfg = BenchConfig(prompt_length=8, new_tokens=4, repeats=2, warmup=0, threads=1)
    table = run_benchmark(loaded, [BenchPoint(static_selection(loaded, heads, neurons), 0.5)], cfg)
    table = table.set_index("predictor")
    assert table.loc["static", "bytes_per_token"] < table.loc["dense", "bytes_per_token"].min()
    hf = table[table.path == "hf_generate"].iloc[0]
    assert hf.bytes_per_token == table[table.path == "ours"].loc["dense", "bytes_per_token"]
    floor = 1000 * table.bytes_per_token / table.read_gb_per_s / 1e9
    torch.testing.assert_close(torch.tensor(table.floor_ms_per_token.values), torch.tensor(floor.values))
    assert (table.x_floor == table.ms_per_token / table.floor_ms_per_token).all()
    tensor_floor = 1000 * table.bytes_per_token / table.tensor_read_gb_per_s / 1e9
    torch.testing.assert_close(torch.tensor(table.x_tensor_read.values),
                               torch.tensor((table.ms_per_token / tensor_floor).values))
    assert "hf_generate_compiled" not in set(table.path)  # a CUDA baseline (bench.hf_compiled)
    assert table.fastest_dense.nunique() == 1 and table.fastest_dense.iloc[0] in ("hf_generate", "ours")
    assert table.loc["dense", "speedup_vs_fastest_dense"].max() == pytest.approx(1.0)  # the fastest is itself


def test_hf_generate_with_a_static_cache_is_timed_with_its_warm_up_apart(session_cache):
    """The CUDA baseline `hf_generate_compiled` (a static cache, compiled by transformers on
    CUDA) through the same timing on the CPU, where transformers does not compile: the static
    cache is accepted and the warm-up is reported apart."""
    loaded = load_tiny("tiny-llama", session_cache)
    cfg = BenchConfig(prompt_length=8, new_tokens=4, repeats=2, warmup=0, threads=1)
    timed = _hf_generate_ms_per_token(loaded, torch.arange(3, 11), cfg, static_cache=True)
    assert timed["compile_s"] > 0 and timed["ms_per_token_min"] <= timed["ms_per_token"] <= timed["ms_per_token_max"]
    assert "compile_s" not in _hf_generate_ms_per_token(loaded, torch.arange(3, 11), cfg)


def test_the_read_probe_measures_a_plausible_bandwidth():
    assert 1e8 < read_bandwidth(torch.device("cpu"), repeats=2, size=64 * 2**20) < 1e13


def test_the_tensor_read_reference_reads_exactly_the_tensors_given(session_cache):
    loaded = load_tiny("tiny-llama", session_cache)
    decoder = SparseDecoder(loaded)
    tensors = decoder.dense_tensors()
    w = decoder.dense[1]
    assert [t is u for t, u in zip(tensors[5:10], (w.q, w.k, w.v, w.o, w.mlp))] == [True] * 5
    assert len(tensors) == 5 * loaded.shape.num_layers + 1
    assert tensors[-1] is loaded.model.get_output_embeddings().weight
    assert 1e6 < tensors_read_bandwidth(tensors, repeats=2) < 1e13
