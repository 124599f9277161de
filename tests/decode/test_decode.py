"""The sparse decode path gives the masked dense path's logits and keeps what it keeps, for every
selector the decode path runs, every update policy it serves and both prefills."""

from typing import Optional

import pytest
import torch

from shadow_sweep.config import BenchKernel, MaskUpdate, PredictorConfig, Prefill, Ranking, SparsityConfig
from shadow_sweep.decode.engine import SparseDecoder
from shadow_sweep.decode.families import ACTIVATIONS
from shadow_sweep.decode.fused import gather_kernels
from shadow_sweep.decode.generate import Generator
from shadow_sweep.decode.selection import DecodeSelection
from shadow_sweep.selectors.registry import SELECTORS, selection_of
from shadow_sweep.selectors.runtime import SelectionRuntime
from shadow_sweep.sparsity.policy import SparsityPolicy
from tests.conftest import compose_app, load_tiny
from tests.selectors.helpers import (fitted_for, mask_predictor, runtime_for, runtime_of, synthetic_traces,
                                    tiny_statistics)

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


def static_selection(loaded, heads, neurons, ranking: str = "per_layer") -> DecodeSelection:
    """The decode view of a static selection whose masks are `heads` [L, H] / `neurons` [L, I]."""
    policy = SparsityPolicy(SparsityConfig(level=0.5, ranking=Ranking[ranking]), loaded.shape)
    return DecodeSelection(runtime_of(loaded, _static(loaded, heads, neurons), policy, MaskUpdate.per_sequence))


@torch.no_grad()
def masked_path(loaded, runtime: SelectionRuntime, prompt, tokens, prefill):
    """The accuracy path for a generated sequence: one forward over prompt + tokens[:-1] with the
    runtime's masks -> (logits at the positions that predict each new token, the kept counts
    [T, L, 4] of every position: attention-input, head-context, MLP-input channels, neurons)."""
    ids = torch.cat([prompt, torch.tensor(tokens[:-1])])[None]
    counted = []
    finish = runtime.account.finish

    def keep_counts() -> None:
        counted.append(runtime.account.counts[0, :, :, :4].clone())
        finish()

    with runtime:
        runtime.account.finish = keep_counts
        if prefill == Prefill.dense:
            runtime.dense_prompt(torch.tensor([len(prompt)]))
        runtime.choose_at(torch.tensor([len(prompt) - 1]))  # per_sequence: the last prompt token
        logits = list(loaded.model(input_ids=ids).logits[0, len(prompt) - 1:])
    return logits, counted[0]


def masked_path_logits(loaded, runtime, prompt, tokens, prefill):
    return masked_path(loaded, runtime, prompt, tokens, prefill)[0]


def cases() -> list[tuple]:
    """(predictor, neurons, update, rule) for every selector the decode path runs (the other
    block dense where it selects one) under each update it serves (a fixed one per_sequence),
    the mixes of heads and neurons from two selectors, and the top_k rules."""
    found = []
    for name, cls in SELECTORS.items():
        spec = cls.spec
        if spec.decode and name != "dense":
            updates = [MaskUpdate.per_sequence] if spec.fixed else list(spec.updates)
            found += [(name, None, update, None) for update in updates]
    return found + [("shadowllm", "cats", MaskUpdate.per_token, None),
                    ("dejavu", "dejavu_mlp", MaskUpdate.per_token, None),
                    ("dejavu", "dejavu_mlp", MaskUpdate.per_sequence, None),
                    ("teal", None, MaskUpdate.per_token, "top_k"), ("cats", None, MaskUpdate.per_token, "top_k")]


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-opt"])
def model(request, tmp_path_factory):
    """A tiny model, its calibration statistics and the fits shared by the cases."""
    from shadow_sweep.cache import StageCache

    loaded = load_tiny(request.param, StageCache(tmp_path_factory.mktemp("decode")))
    return loaded, tiny_statistics(loaded), {}


def point_runtime(model, predictor: str, neurons: Optional[str], update: MaskUpdate, rule: Optional[str],
                  **sparsity) -> SelectionRuntime:
    loaded, statistics, fits = model
    extra = {"rule": rule} if rule else {}
    return runtime_for(loaded, predictor, neurons=neurons, update=update, statistics=statistics, fits=fits,
                       criterion="l2_norm", **extra, **sparsity)


@pytest.mark.parametrize("case", cases(), ids=lambda c: "-".join(str(getattr(v, "value", v)) for v in c if v))
@pytest.mark.parametrize("prefill", list(Prefill))
@pytest.mark.parametrize("kernel", [BenchKernel.eager, BenchKernel.fused_layer])
def test_decode_matches_the_masked_path_for_every_selector_update_and_prefill(model, case, prefill, kernel,
                                                                             embedded_cache):
    """32 generated tokens: the decode path's logits equal one masked forward of the accuracy path
    over the same sequence (same selectors, policy, update and prefill), with torch ops and with
    every one-token step in the C++ layer, and each decode step keeps, layer by layer, as many
    channels, heads and neurons as the accuracy path kept at that token."""
    loaded = model[0]
    kernels = gather_kernels(kernel, loaded.device, torch.float32, embedded_cache.root)
    selection = DecodeSelection(point_runtime(model, *case))
    run = Generator(SparseDecoder(loaded, kernels), selection, prefill=prefill).generate(_prompt(5), STEPS)
    expected, counts = masked_path(loaded, point_runtime(model, *case), _prompt(5), run.tokens, prefill)
    assert len(run.logits) == len(expected) == STEPS
    for ours, theirs in zip(run.logits, expected):
        torch.testing.assert_close(ours, theirs, **TOLERANCE)
    decoded = torch.stack([record.counts[:, :4] for record in run.records])
    assert torch.equal(decoded, counts[len(_prompt(5)):len(_prompt(5)) + STEPS - 1])


def test_a_sink_reaching_past_the_prompt_is_refused(model):
    selection = DecodeSelection(point_runtime(model, "teal", None, MaskUpdate.per_token, None, dense_positions=12))
    with pytest.raises(ValueError, match="dense_positions=12"):
        Generator(SparseDecoder(model[0]), selection).generate(_prompt(5), 4)


def test_a_sink_inside_the_prompt_decodes_as_the_masked_path(model, embedded_cache):
    loaded = model[0]
    kernels = gather_kernels(BenchKernel.fused_layer, loaded.device, torch.float32, embedded_cache.root)
    case = ("teal", None, MaskUpdate.per_token, None)
    run = Generator(SparseDecoder(loaded, kernels), DecodeSelection(point_runtime(model, *case, dense_positions=2))
                    ).generate(_prompt(5), STEPS)
    expected = masked_path_logits(loaded, point_runtime(model, *case, dense_positions=2), _prompt(5), run.tokens,
                                  Prefill.sparse)
    for ours, theirs in zip(run.logits, expected):
        torch.testing.assert_close(ours, theirs, **TOLERANCE)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-opt"])
def test_fixed_masks_match_the_masked_path_over_32_tokens(name, session_cache):
    loaded = load_tiny(name, session_cache)
    s = loaded.shape
    policy = SparsityPolicy(SparsityConfig(level=0.5, ranking=Ranking["per_layer"]), s)
    heads, neurons = policy.masks(torch.rand(1, s.num_layers, s.num_heads), torch.rand(1, s.num_layers, s.num_neurons))
    run = Generator(SparseDecoder(loaded), static_selection(loaded, heads[0], neurons[0])).generate(_prompt(), STEPS)
    with runtime_of(loaded, _static(loaded, heads[0], neurons[0]), policy, MaskUpdate.per_sequence) as runtime:
        runtime.masks.set(heads, neurons)
        expected = reference_logits(loaded, _prompt(), run.tokens)
    assert len(run.logits) == STEPS
    for ours, theirs in zip(run.logits, expected):
        torch.testing.assert_close(ours, theirs, **TOLERANCE)


@pytest.mark.parametrize("update", [MaskUpdate.per_sequence, MaskUpdate.per_token])
def test_sparsity_zero_equals_dense(update, session_cache):
    loaded = load_tiny("tiny-opt", session_cache)
    selection = DecodeSelection(runtime_for(loaded, "shadowllm", level=0.0, update=update))
    for chosen in (selection, None):
        run = Generator(SparseDecoder(loaded), chosen).generate(_prompt(2), STEPS)
        for ours, theirs in zip(run.logits, reference_logits(loaded, _prompt(2), run.tokens)):
            torch.testing.assert_close(ours, theirs, **TOLERANCE)


def test_unsupported_family_is_named(session_cache):
    with pytest.raises(ValueError, match="supports the families"):
        SparseDecoder(load_tiny("tiny-gemma3", session_cache))


def test_a_selector_the_decode_path_does_not_run_is_named(session_cache):
    loaded = load_tiny("tiny-llama", session_cache)
    with pytest.raises(ValueError, match="does not run selector 'oracle'"):
        DecodeSelection(runtime_for(loaded, "oracle"))


@pytest.mark.slow
@pytest.mark.parametrize("case", [("static", None, MaskUpdate.per_sequence, None),
                                  ("shadowllm", None, MaskUpdate.per_token, None),
                                  ("teal", None, MaskUpdate.per_token, None),
                                  ("wina", None, MaskUpdate.per_token, None),
                                  ("shadowllm", "cats", MaskUpdate.per_token, None)],
                         ids=lambda c: "-".join(str(getattr(v, "value", v)) for v in c if v))
def test_smollm2_decode_matches_the_masked_path(case, smollm2):
    """SmolLM2 (GQA, 30 layers) in the C++ layer against one masked forward. A fixed selection
    gives the same logits. Choices made per token from the layers' own values are exact on the
    tiny models (above) but chaotic in float rounding over 30 layers: the C++ norm sums in
    another order than torch's, an entry within ~1e-7 of a threshold flips, and later layers'
    choices follow (teal: the first flip at layer 6 of the first step, 0.3% of later choices
    differ). So here the two paths must agree in distribution: the same greedy token at 90% of
    the steps or more, a mean KL of the next-token distributions under 0.05 nats, and mean kept
    counts per slot within 1%."""
    loaded, statistics, kernels = smollm2
    prompt = _prompt(3, 16)
    fits = {}
    make = lambda: runtime_for(loaded, case[0], neurons=case[1], update=case[2], statistics=statistics,  # noqa: E731
                               fits=fits, traces=synthetic_traces(loaded.shape, 16), criterion="l2_norm")
    run = Generator(SparseDecoder(loaded, kernels), DecodeSelection(make())).generate(prompt, STEPS)
    expected, counts = masked_path(loaded, make(), prompt, run.tokens, Prefill.sparse)
    if case[0] == "static":
        for ours, theirs in zip(run.logits, expected):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=2e-3)  # logits up to ~40: relative 5e-5
    same_token = sum(int(ours.argmax() == theirs.argmax()) for ours, theirs in zip(run.logits, expected))
    assert same_token >= 0.9 * STEPS
    kl = [torch.nn.functional.kl_div(theirs.log_softmax(-1), ours.log_softmax(-1), log_target=True, reduction="sum")
          for ours, theirs in zip(run.logits, expected)]
    assert float(torch.stack(kl).mean()) < 0.05
    decoded = torch.stack([record.counts[:, :4] for record in run.records]).float()
    realised = counts[len(prompt):len(prompt) + STEPS - 1].float()
    torch.testing.assert_close(decoded.mean((0, 1)), realised.mean((0, 1)), rtol=0.01, atol=0)


@pytest.fixture(scope="module")
def smollm2(embedded_cache):
    from shadow_sweep.data.calibration import EncodedExample
    from shadow_sweep.models.loading import load_model
    from shadow_sweep.selectors.statistics import collect_statistics

    loaded = load_model(compose_app().model, embedded_cache)
    g = torch.Generator().manual_seed(0)
    encoded = [EncodedExample(torch.randint(3, 40000, (64,), generator=g).tolist(), 1) for _ in range(8)]
    statistics = collect_statistics(loaded, encoded, batch_size=4, progress=False)
    kernels = gather_kernels(BenchKernel.fused_layer, loaded.device, torch.float32, embedded_cache.root)
    return loaded, statistics, kernels


def test_benchmark_runs_every_point_kind_end_to_end_on_a_tiny_model(model, embedded_cache):
    from shadow_sweep.config import BenchConfig
    from shadow_sweep.decode.benchmark import BenchPoint, run_benchmark

    cases = [("shadowllm", None, MaskUpdate.per_token), ("dejavu", None, MaskUpdate.per_sequence),
             ("static", None, MaskUpdate.per_sequence), ("teal", None, MaskUpdate.per_token),
             ("cats", None, MaskUpdate.per_token), ("shadowllm", "cats", MaskUpdate.per_token)]
    points = [BenchPoint(DecodeSelection(point_runtime(model, name, neurons, update, None)), 0.5)
              for name, neurons, update in cases]
    cfg = BenchConfig(prompt_length=8, new_tokens=4, repeats=2, warmup=0, threads=1)
    kernels = gather_kernels(BenchKernel.fused_layer, torch.device("cpu"), torch.float32, embedded_cache.root)
    table = run_benchmark(model[0], points, cfg, kernels)
    assert list(table.path) == ["hf_generate", "ours"] + ["ours"] * len(cases)
    assert list(zip(table.predictor, table["update"]))[2:] == [
        ("shadowllm", "per_token"), ("dejavu", "per_sequence"), ("static", "per_sequence"), ("teal", "per_token"),
        ("cats", "per_token"), ("shadowllm+cats", "per_token")]
    assert (table.ms_per_token > 0).all() and table.speedup_vs_dense.notna().all()
    assert table.set_index("predictor").loc["shadowllm+cats", ["heads_point", "neurons_point"]].tolist() == [
        "ahead", "gate"]
    assert (table.layout_bytes > 0).all()  # teal's and cats's layouts were made


def _per_token_runs(loaded, decoders, seed=4, steps=16):
    make = lambda: DecodeSelection(runtime_for(loaded, "shadowllm"))  # noqa: E731
    return [Generator(d, make()).generate(_prompt(seed), steps) for d in decoders]


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
    """Fixed masks (global ranking) where layer 1 keeps no head and layer 2 no neuron: every
    one-token step in the C++ layer (bench.kernel=fused_layer) gives the torch-ops path's tokens
    and logits."""
    loaded = load_tiny(name, session_cache)
    s = loaded.shape
    g = torch.Generator().manual_seed(3)
    heads = torch.rand(s.num_layers, s.num_heads, generator=g) + 1
    neurons = torch.rand(s.num_layers, s.num_neurons, generator=g) + 1
    heads[1] = 0.0
    neurons[2] = 0.0
    whole_layers = gather_kernels(BenchKernel.fused_layer, loaded.device, torch.float32, embedded_cache.root)
    runs = [Generator(decoder, static_selection(loaded, heads, neurons, "global")).generate(_prompt(6), STEPS)
            for decoder in (SparseDecoder(loaded), SparseDecoder(loaded, whole_layers))]
    assert runs[1].records[0].counts[1, 1] == 0 and runs[1].records[0].counts[2, 3] == 0
    assert runs[1].logits[-1].abs().sum() > 0
    _assert_same_runs(runs)
