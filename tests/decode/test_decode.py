"""The sparse decode path gives the masked dense path's logits for the same masks."""

import pytest
import torch

from shadow_sweep.config import BenchKernel, MaskUpdate, PredictorConfig, Prefill, Ranking, SparsityConfig
from shadow_sweep.decode.engine import SparseDecoder
from shadow_sweep.decode.families import ACTIVATIONS
from shadow_sweep.decode.fused import gather_kernels
from shadow_sweep.decode.generate import Generator
from shadow_sweep.models.masks import LinearInputMasks
from shadow_sweep.sparsity.policy import SparsityPolicy
from tests.conftest import compose_app, load_tiny
from tests.selectors.helpers import fitted_for, mask_predictor, runtime_of, synthetic_traces

STEPS = 32
TOLERANCE = dict(rtol=1e-4, atol=1e-4)  # fp32: the sparse path sums fewer terms in another order


def _prompt(seed=0, length=10):
    return torch.randint(3, 300, (length,), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def reference_logits(loaded, prompt, tokens):
    """HF's own forward with a KV cache, fed the sparse path's tokens: logits per step."""
    out = loaded.model(input_ids=prompt[None], use_cache=True)
    logits, cache = [out.logits[0, -1]], out.past_key_values
    for token in tokens[:-1]:
        out = loaded.model(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True)
        logits.append(out.logits[0, -1])
        cache = out.past_key_values
    return logits


def _static(loaded, heads, neurons):
    """A static predictor whose masks are exactly `heads`/`neurons` at level 0.5 per layer."""
    fitted = fitted_for("static", loaded.shape, synthetic_traces(loaded.shape, 8))
    fitted.mean_head_scores, fitted.mean_neuron_scores = heads.float(), neurons.float()
    return fitted


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-opt"])
def test_fixed_masks_match_the_masked_path_over_32_tokens(name, session_cache):
    loaded = load_tiny(name, session_cache)
    s = loaded.shape
    policy = SparsityPolicy(SparsityConfig(level=0.5, ranking=Ranking["per_layer"]), s)
    scores = torch.rand(1, s.num_layers, s.num_heads), torch.rand(1, s.num_layers, s.num_neurons)
    heads, neurons = policy.masks(*scores)
    generator = Generator(SparseDecoder(loaded), mask_predictor(_static(loaded, heads[0], neurons[0]), policy),
                          "per_sequence")
    run = generator.generate(_prompt(), STEPS)
    with LinearInputMasks(loaded.model, loaded.adapter, s) as masks:
        masks.set(heads, neurons)
        expected = reference_logits(loaded, _prompt(), run.tokens)
    assert len(run.logits) == STEPS
    for ours, theirs in zip(run.logits, expected):
        torch.testing.assert_close(ours, theirs, **TOLERANCE)


@pytest.mark.parametrize("kind", ["shadowllm", "dejavu"])
def test_per_token_prediction_matches_masks_predicted_in_every_forward(kind, session_cache):
    loaded = load_tiny("tiny-llama", session_cache)
    fitted = fitted_for(kind, loaded.shape, synthetic_traces(loaded.shape, 64), epochs=3)
    policy = SparsityPolicy(SparsityConfig(level=0.5), loaded.shape)
    decoder = SparseDecoder(loaded)
    run = Generator(decoder, mask_predictor(fitted, policy), "per_token").generate(_prompt(1), STEPS)
    with runtime_of(loaded, fitted, policy):
        expected = reference_logits(loaded, _prompt(1), run.tokens)
    for ours, theirs in zip(run.logits, expected):
        torch.testing.assert_close(ours, theirs, **TOLERANCE)


@torch.no_grad()
def masked_path_logits(loaded, runtime, prompt, tokens, prefill):
    """The accuracy path's logits for a generated sequence: one forward over prompt + tokens[:-1]
    with the runtime's masks, read at the positions that predict each new token."""
    ids = torch.cat([prompt, torch.tensor(tokens[:-1])])[None]
    if prefill == Prefill.dense:
        runtime.dense_prompt(torch.tensor([len(prompt)]))
    runtime.choose_at(torch.tensor([len(prompt) - 1]))  # per_sequence: the last prompt token
    return list(loaded.model(input_ids=ids).logits[0, len(prompt) - 1:])


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-opt"])
@pytest.mark.parametrize("kind", ["shadowllm", "dejavu", "static"])
@pytest.mark.parametrize("update", list(MaskUpdate))
@pytest.mark.parametrize("prefill", list(Prefill))
@pytest.mark.parametrize("kernel", [BenchKernel.eager, BenchKernel.fused_layer])
def test_decode_matches_the_masked_path_for_every_update_and_prefill(name, kind, update, prefill, kernel,
                                                                     session_cache, embedded_cache):
    """32 generated tokens: the sparse decode path's logits equal one masked forward of the
    accuracy path over the same sequence (same predictor, policy, update and prefill), with
    torch ops and with every one-token step in the C++ layer."""
    loaded = load_tiny(name, session_cache)
    fitted = fitted_for(kind, loaded.shape, synthetic_traces(loaded.shape, 64), epochs=3)
    policy = SparsityPolicy(SparsityConfig(level=0.5), loaded.shape)
    kernels = gather_kernels(kernel, loaded.device, torch.float32, embedded_cache.root)
    generator = Generator(SparseDecoder(loaded, kernels), mask_predictor(fitted, policy, update=update), update.value,
                          prefill=prefill)
    run = generator.generate(_prompt(5), STEPS)
    with runtime_of(loaded, fitted, policy, update) as runtime:
        expected = masked_path_logits(loaded, runtime, _prompt(5), run.tokens, prefill)
    assert len(run.logits) == len(expected) == STEPS
    for ours, theirs in zip(run.logits, expected):
        torch.testing.assert_close(ours, theirs, **TOLERANCE)


@pytest.mark.parametrize("update", ["dense", "per_sequence"])
def test_sparsity_zero_equals_dense(update, session_cache):
    loaded = load_tiny("tiny-opt", session_cache)
    fitted = fitted_for("shadowllm", loaded.shape, synthetic_traces(loaded.shape, 32), epochs=2)
    decoder = SparseDecoder(loaded)
    policy = SparsityPolicy(SparsityConfig(level=0.0), loaded.shape)
    run = Generator(decoder, mask_predictor(fitted, policy), update).generate(_prompt(2), STEPS)
    for ours, theirs in zip(run.logits, reference_logits(loaded, _prompt(2), run.tokens)):
        torch.testing.assert_close(ours, theirs, **TOLERANCE)


def test_unsupported_family_is_named(session_cache):
    with pytest.raises(ValueError, match="supports the families"):
        SparseDecoder(load_tiny("tiny-gemma3", session_cache))


@pytest.mark.slow
def test_smollm2_sparse_path_matches_the_masked_path(embedded_cache):
    from shadow_sweep.models.loading import load_model

    loaded = load_model(compose_app().model, embedded_cache)
    s = loaded.shape
    policy = SparsityPolicy(SparsityConfig(level=0.5), s)
    g = torch.Generator().manual_seed(0)
    heads, neurons = policy.masks(torch.rand(1, s.num_layers, s.num_heads, generator=g),
                                  torch.rand(1, s.num_layers, s.num_neurons, generator=g))
    decoder = SparseDecoder(loaded)
    run = Generator(decoder, mask_predictor(_static(loaded, heads[0], neurons[0]), policy),
                    "per_sequence").generate(_prompt(3, 16), STEPS)
    with LinearInputMasks(loaded.model, loaded.adapter, s) as masks:
        masks.set(heads, neurons)
        expected = reference_logits(loaded, _prompt(3, 16), run.tokens)
    for ours, theirs in zip(run.logits, expected):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=2e-3)  # logits up to ~40: relative 5e-5


@pytest.mark.slow
@pytest.mark.parametrize("prefill", list(Prefill))
def test_smollm2_per_token_decode_matches_the_masked_path(embedded_cache, prefill):
    """SmolLM2 (GQA, 30 layers), a ShadowLLM network per token: decode == one masked forward."""
    from shadow_sweep.models.loading import load_model

    loaded = load_model(compose_app().model, embedded_cache)
    fitted = fitted_for("shadowllm", loaded.shape, synthetic_traces(loaded.shape, 16), epochs=1)
    policy = SparsityPolicy(SparsityConfig(level=0.5, ranking=Ranking["per_layer"]), loaded.shape)
    update = MaskUpdate.per_token
    run = Generator(SparseDecoder(loaded), mask_predictor(fitted, policy, update=update), update.value,
                    prefill=prefill).generate(_prompt(3, 16), STEPS)
    with runtime_of(loaded, fitted, policy, update) as runtime:
        expected = masked_path_logits(loaded, runtime, _prompt(3, 16), run.tokens, prefill)
    for ours, theirs in zip(run.logits, expected):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=2e-3)  # logits up to ~40: relative 5e-5


def test_benchmark_runs_end_to_end_on_a_tiny_model(session_cache):
    from shadow_sweep.config import BenchConfig
    from shadow_sweep.decode.benchmark import run_benchmark

    loaded = load_tiny("tiny-llama", session_cache)
    predictors = {kind: fitted_for(kind, loaded.shape, synthetic_traces(loaded.shape, 16), epochs=1)
                  for kind in ("shadowllm", "dejavu", "static")}
    policies = {0.5: SparsityPolicy(SparsityConfig(level=0.5), loaded.shape)}
    cfg = BenchConfig(prompt_length=8, new_tokens=4, repeats=3, warmup=0, threads=1,
                      updates=[MaskUpdate.per_sequence, MaskUpdate.per_token])
    table = run_benchmark(loaded, predictors, policies, cfg)
    assert list(table.path) == ["hf_generate", "ours"] + ["ours"] * 5
    assert set(zip(table["predictor"], table["update"])) >= {("shadowllm", "per_token"), ("dejavu", "per_sequence"),
                                                        ("static", "per_sequence"), ("dense", "dense")}
    assert (table.ms_per_token > 0).all() and table.speedup_vs_dense.notna().all()


def _per_token_runs(loaded, decoders, seed=4, steps=16):
    fitted = fitted_for("shadowllm", loaded.shape, synthetic_traces(loaded.shape, 32), epochs=2)
    policy = SparsityPolicy(SparsityConfig(level=0.5), loaded.shape)
    return [Generator(d, mask_predictor(fitted, policy, loaded.device), "per_token").generate(_prompt(seed), steps)
            for d in decoders]


def _assert_same_runs(runs):
    for other in runs[1:]:
        assert other.tokens == runs[0].tokens
        for reference, logits in zip(runs[0].logits, other.logits):
            torch.testing.assert_close(logits.cpu(), reference.cpu(), **TOLERANCE)


def test_gather_kernels_match_the_eager_gather(session_cache, embedded_cache):
    """The C++ kernels (CPU) and the torch-ops kernels (the CUDA path's) against W[rows]."""
    from shadow_sweep.decode.fused import TorchGatherKernels, gather_kernels

    # compiled once per machine
    compiled = gather_kernels("fused", torch.device("cpu"), torch.float32, embedded_cache.root)
    g = torch.Generator().manual_seed(0)
    weight, x, a = torch.randn(40, 24, generator=g), torch.randn(24, generator=g), torch.randn(5, generator=g)
    rows = torch.tensor([0, 3, 4, 17, 39])
    for kernels in (compiled, TorchGatherKernels()):
        torch.testing.assert_close(kernels.gather_gemv(weight, rows, x), weight[rows] @ x)
        torch.testing.assert_close(kernels.gather_transposed_gemv(weight, rows, a), a @ weight[rows])
    # every row (rows None), and rows lying apart (a view of the neuron-major MLP [I, parts, D])
    torch.testing.assert_close(compiled.gather_gemv(weight, None, x), weight @ x)
    strided = torch.randn(40, 3, 24, generator=g)[:, 1]
    torch.testing.assert_close(compiled.gather_gemv(strided, rows, x), strided[rows] @ x)
    torch.testing.assert_close(compiled.gather_transposed_gemv(strided, rows, a), a @ strided[rows])
    mlp = torch.randn(40, 3, 24, generator=g)  # up, gate, down^T of each neuron
    up, gate, down = (mlp[rows, part] for part in range(3))
    expected = (torch.nn.functional.silu(gate @ x) * (up @ x)) @ down
    torch.testing.assert_close(compiled.module.neuron_major_mlp(mlp, rows, x, ACTIVATIONS["silu"]), expected)
    loaded = load_tiny("tiny-llama", session_cache)
    whole_layers = gather_kernels("fused_layer", torch.device("cpu"), torch.float32, embedded_cache.root)
    _assert_same_runs(_per_token_runs(loaded, [SparseDecoder(loaded), SparseDecoder(loaded, compiled),
                                               SparseDecoder(loaded, TorchGatherKernels()),
                                               SparseDecoder(loaded, whole_layers)]))


def test_the_cpp_top_k_keeps_the_highest_scores_ascending(embedded_cache):
    """top_k_rows against torch's top-k on distinct scores; ties at the threshold go to lower
    positions, NaN ranks above every number (as in torch.topk); k = 0 and k = U."""
    from shadow_sweep.sparsity.topk import top_k_indices

    compiled = gather_kernels("fused", torch.device("cpu"), torch.float32, embedded_cache.root)
    scores = torch.randn(7, 300, generator=torch.Generator().manual_seed(4))
    for keep in (0, 1, 150, 299, 300):
        assert torch.equal(compiled.top_k_indices(scores, keep), top_k_indices(scores, keep)), keep
    assert torch.equal(compiled.top_k_indices(scores[2], 40), top_k_indices(scores[2], 40))  # one row [U]
    tied = torch.tensor([[1.0, 3.0, 2.0, 2.0, 2.0, float("nan")]])
    assert compiled.top_k_indices(tied, 3).tolist() == [[1, 2, 5]]
    assert compiled.top_k_indices(tied, 4).tolist() == [[1, 2, 3, 5]]


@pytest.mark.parametrize("name", ["shadowllm", "dejavu"])
def test_the_predictor_for_one_token_on_the_kernels_equals_its_batched_forward(name, session_cache,
                                                                                embedded_cache):
    """MaskPredictor with decode kernels (one_row's vector-matrix products, the C++ top-k)
    keeps the units its batched torch forward keeps, per layer, for ShadowLLM and DejaVu."""
    from shadow_sweep.decode.fused import TorchGatherKernels
    from shadow_sweep.predictors.fit import untrained
    from shadow_sweep.selectors.registry import spec

    loaded = load_tiny("tiny-llama", session_cache)
    s = loaded.shape
    fitted = untrained(PredictorConfig(name=name), s, name, spec(name).network)
    policy = SparsityPolicy(SparsityConfig(level=0.5, ranking=Ranking.per_layer), s)
    predictor = mask_predictor(fitted, policy)
    compiled = gather_kernels("fused", torch.device("cpu"), torch.float32, embedded_cache.root)
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for kernels in (compiled, TorchGatherKernels()):
            if name == "shadowllm":
                context = torch.randn(1, s.num_heads * s.head_dim, generator=g)
                batched = predictor.all_layer_scores(context)
                for one, expected in zip(predictor.all_layer_scores(context, kernels), batched):
                    torch.testing.assert_close(one, expected)
                pairs = zip(*predictor.all_layers_kept(context, kernels), *predictor.all_layers_kept(context))
            else:
                hidden = torch.randn(1, s.hidden_size, generator=g)
                pairs = [(*predictor.one_layer_kept(l, hidden, kernels), *predictor.one_layer_kept(l, hidden))
                         for l in range(1, s.num_layers)]
            for heads, neurons, heads_torch, neurons_torch in pairs:
                assert torch.equal(heads, heads_torch) and torch.equal(neurons, neurons_torch)


@pytest.mark.parametrize("equal_counts", [True, False])
def test_indexed_layers_at_once_equal_one_layer_at_a_time(equal_counts, session_cache):
    loaded = load_tiny("tiny-llama", session_cache)
    s, decoder = loaded.shape, SparseDecoder(loaded)
    g = torch.Generator().manual_seed(5)
    count = s.num_heads // 2
    heads = [torch.randperm(s.num_heads, generator=g)[:count if equal_counts else l].sort().values
             for l in range(s.num_layers)]
    neurons = [torch.randperm(s.num_neurons, generator=g)[:s.num_neurons // 2].sort().values
               for _ in range(s.num_layers)]
    together = decoder.indexed_from(1, heads, neurons)
    assert len(together) == s.num_layers - 1
    for l, layer in enumerate(together, start=1):
        assert layer.dense is decoder.dense[l]
        expected_rows = torch.cat([torch.arange(h * s.head_dim, (h + 1) * s.head_dim) for h in heads[l].tolist()]
                                  + [torch.zeros(0, dtype=torch.long)])
        assert torch.equal(layer.q_rows, expected_rows), l
        assert torch.equal(layer.neuron_rows, neurons[l]) and torch.equal(layer.query_heads, heads[l])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-opt"])
def test_cuda_path_matches_the_cpu_path(name, session_cache):
    """The whole decode path on CUDA (torch-ops gather kernels, eager gathers, fixed masks)
    gives the CPU path's tokens and logits."""
    from shadow_sweep.decode.fused import TorchGatherKernels

    cpu, gpu = load_tiny(name, session_cache), load_tiny(name, session_cache, device="cuda")
    assert gpu.device.type == "cuda"
    _assert_same_runs(_per_token_runs(cpu, [SparseDecoder(cpu)]) +
                      _per_token_runs(gpu, [SparseDecoder(gpu), SparseDecoder(gpu, TorchGatherKernels())]))


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-opt"])
def test_the_cpp_layer_equals_torch_ops_with_layers_that_keep_nothing(name, session_cache, embedded_cache):
    """Fixed masks where one layer keeps no head and another no neuron: every one-token step
    in the C++ layer (bench.kernel=fused_layer) gives the torch-ops path's tokens and logits."""
    loaded = load_tiny(name, session_cache)
    s = loaded.shape
    g = torch.Generator().manual_seed(3)
    heads = torch.rand(s.num_layers, s.num_heads, generator=g) > 0.5
    neurons = torch.rand(s.num_layers, s.num_neurons, generator=g) > 0.5
    heads[1] = False
    neurons[2] = False
    policy = SparsityPolicy(SparsityConfig(level=0.5, ranking=Ranking["per_layer"]), s)
    whole_layers = gather_kernels(BenchKernel.fused_layer, loaded.device, torch.float32, embedded_cache.root)
    runs = []
    for decoder in (SparseDecoder(loaded), SparseDecoder(loaded, whole_layers)):
        generator = Generator(decoder, mask_predictor(_static(loaded, heads, neurons), policy), "per_sequence")
        generator.static_weights = [decoder.dense[0]] + [
            decoder.sliced(l, heads[l].nonzero().squeeze(1), neurons[l].nonzero().squeeze(1))
            for l in range(1, s.num_layers)]
        runs.append(generator.generate(_prompt(6), STEPS))
    assert runs[1].logits[-1].abs().sum() > 0
    _assert_same_runs(runs)
