"""Each selector at the gate or input equals an independent computation: plain hooks on every
linear written here (teal, wina: inputs zeroed by hand; cats: the mask from the gate computed by
hand; dejavu_mlp: its network fed the MLP input read at the norm's output); thresholds realise
their level on held-out tokens; a sink keeps its positions dense."""

import pytest
import torch

from shadow_sweep.models.masks import Slot
from shadow_sweep.predictors.targets import normalise_inputs
from shadow_sweep.sparsity.topk import keep_count, top_k_mask
from tests.conftest import load_tiny
from tests.selectors.helpers import fitted_for, runtime_for, synthetic_traces, tiny_statistics

LEVEL = 0.5


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-opt"])
def model(request, tmp_path_factory):
    from shadow_sweep.cache import StageCache

    loaded = load_tiny(request.param, StageCache(tmp_path_factory.mktemp("cache")))
    return loaded, tiny_statistics(loaded, sequences=256, length=32)


def tokens(seed: int = 0, batch: int = 2, length: int = 14) -> torch.Tensor:
    return torch.randint(3, 300, (batch, length), generator=torch.Generator().manual_seed(seed))


def masked_logits(loaded, runtime, ids) -> torch.Tensor:
    with runtime, torch.no_grad():
        return loaded.model(input_ids=ids).logits


def hand_logits(loaded, hooks, ids) -> torch.Tensor:
    """The model's logits with plain hooks: [(module, kind, fn)] with kind 'pre' or 'post'."""
    handles = [m.register_forward_pre_hook(fn) if kind == "pre" else m.register_forward_hook(fn)
               for m, kind, fn in hooks]
    try:
        with torch.no_grad():
            return loaded.model(input_ids=ids).logits
    finally:
        for handle in handles:
            handle.remove()


def linears(loaded, layer: int) -> dict[str, list]:
    """Every linear of a layer by the input it reads (written out here, not the adapter's slots)."""
    block = loaded.adapter.decoder_layers(loaded.model)[layer]
    attention = block.self_attn
    if hasattr(block, "mlp"):
        mlp = block.mlp
        return {"attention_input": [attention.q_proj, attention.k_proj, attention.v_proj],
                "head_context": [attention.o_proj], "mlp_input": [mlp.gate_proj, mlp.up_proj],
                "neuron_activation": [mlp.down_proj]}
    return {"attention_input": [attention.q_proj, attention.k_proj, attention.v_proj],
            "head_context": [attention.out_proj], "mlp_input": [block.fc1], "neuron_activation": [block.fc2]}


def top_k(scores: torch.Tensor, width: int) -> torch.Tensor:
    """Each token's (row of `width` entries) top round((1 - LEVEL) width) entries."""
    return top_k_mask(scores.view(-1, width), keep_count(LEVEL, width)).view(scores.shape).bool()


def zero_below(score_of, keep):
    """A pre-hook zeroing the entries of a linear's input that `keep(score)` drops."""
    def hook(_module, args):
        x = args[0]
        return (x * keep(score_of(x)).to(x.dtype), *args[1:])

    return hook


@pytest.mark.parametrize("name", ["teal", "wina"])
@pytest.mark.parametrize("rule", ["threshold", "top_k"])
def test_input_selectors_equal_every_linear_zeroing_its_own_input(model, name, rule):
    loaded, statistics = model
    score = "magnitude" if name == "teal" else "weighted"
    hooks = []
    for layer in range(1, loaded.shape.num_layers):  # layer 0 stays dense by default
        for slot, modules in linears(loaded, layer).items():
            norm = torch.linalg.vector_norm(torch.cat([m.weight for m in modules]), dim=0) if name == "wina" else 1.0
            threshold = statistics.threshold(score, Slot(slot), layer, LEVEL)
            width = modules[0].weight.shape[1]
            if rule == "threshold":
                keep = lambda s, t=threshold: s > t  # noqa: E731
            else:
                keep = lambda s, w=width: top_k(s, w)  # noqa: E731
            for module in modules:
                hooks.append((module, "pre", zero_below(lambda x, n=norm: x.abs() * n, keep)))
    ids = tokens()
    expected = hand_logits(loaded, hooks, ids)
    runtime = runtime_for(loaded, name, statistics=statistics, level=LEVEL, rule=rule)
    torch.testing.assert_close(masked_logits(loaded, runtime, ids), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(loaded.model(input_ids=ids).logits, expected)


@pytest.mark.parametrize("rule", ["threshold", "top_k"])
def test_cats_keeps_the_neurons_of_the_largest_gate_activations(model, rule):
    loaded, statistics = model
    hooks = []
    for layer in range(1, loaded.shape.num_layers):
        block = loaded.adapter.decoder_layers(loaded.model)[layer]
        threshold = statistics.threshold("gate", Slot.neuron_activation, layer, LEVEL)
        width = loaded.shape.num_neurons
        keep = (lambda s, t=threshold: s > t) if rule == "threshold" else (lambda s, w=width: top_k(s, w))
        if hasattr(block, "mlp"):  # gated: the gate's activation, computed by hand from its output
            chosen = {}
            hooks.append((block.mlp.gate_proj, "post",
                          lambda _m, _a, out, c=chosen, act=block.mlp.act_fn, k=keep: c.update(mask=k(act(out).abs()))))
            hooks.append((block.mlp.down_proj, "pre", lambda _m, args, c=chosen: (args[0] * c["mask"],)))
        else:  # OPT: the activation itself
            hooks.append((block.fc2, "pre", zero_below(torch.abs, keep)))
    ids = tokens(1)
    expected = hand_logits(loaded, hooks, ids)
    runtime = runtime_for(loaded, "cats", statistics=statistics, level=LEVEL, rule=rule)
    torch.testing.assert_close(masked_logits(loaded, runtime, ids), expected, rtol=1e-5, atol=1e-5)


def test_dejavu_mlp_reads_the_mlp_input_after_attention_and_its_norm(model):
    """Its network fed the MLP's input, read here at the output of the norm before the MLP."""
    loaded, _ = model
    traces = synthetic_traces(loaded.shape, 64)
    fitted = fitted_for("dejavu_mlp", loaded.shape, traces)
    keep = keep_count(LEVEL, loaded.shape.num_neurons)
    hooks = []
    for layer in range(1, loaded.shape.num_layers):
        block = loaded.adapter.decoder_layers(loaded.model)[layer]
        norm, down = (block.post_attention_layernorm, block.mlp.down_proj) if hasattr(block, "mlp") else \
            (block.final_layer_norm, block.fc2)
        chosen = {}

        def predict(_m, _a, out, c=chosen, group=layer - 1):
            scores = fitted.net(normalise_inputs(out.float()).reshape(-1, 1, out.shape[-1]),
                                group=slice(group, group + 1))[:, 0]
            c.update(mask=top_k_mask(scores, keep))

        hooks.append((norm, "post", predict))
        hooks.append((down, "pre", lambda _m, args, c=chosen: ((args[0].reshape(c["mask"].shape) * c["mask"])
                                                                .reshape(args[0].shape),)))
    ids = tokens(2)
    expected = hand_logits(loaded, hooks, ids)
    runtime = runtime_for(loaded, "dejavu_mlp", traces, level=LEVEL, fits={"dejavu_mlp": fitted})
    torch.testing.assert_close(masked_logits(loaded, runtime, ids), expected, rtol=1e-5, atol=1e-5)


def fractions(scores: torch.Tensor, threshold: float) -> tuple[float, float]:
    """(share of scores above the threshold, share of nonzero scores)."""
    return float((scores > threshold).float().mean()), float((scores > 0).float().mean())


@pytest.mark.parametrize("score", ["magnitude", "weighted", "gate"])
def test_calibrated_thresholds_realise_the_level_on_held_out_tokens(model, score):
    """Statistics from one set of sequences; on other sequences of the same distribution the
    dense model's scores exceed each layer's threshold in 1 - level of the entries (+-0.02),
    counted here by plain hooks; where more than `level` of them are 0 (OPT's ReLU), all the
    nonzero ones."""
    loaded, statistics = model
    level = 0.4
    kept = []
    hooks = []
    for layer in range(loaded.shape.num_layers):
        for slot, modules in linears(loaded, layer).items():
            if score == "gate" and slot != "neuron_activation":
                continue
            threshold = statistics.threshold(score, Slot(slot), layer, level)
            norm = torch.linalg.vector_norm(torch.cat([m.weight for m in modules]), dim=0)
            block = loaded.adapter.decoder_layers(loaded.model)[layer]
            if score == "gate" and hasattr(block, "mlp"):
                hooks.append((block.mlp.gate_proj, "post", lambda _m, _a, out, t=threshold, act=block.mlp.act_fn:
                              kept.append(fractions(act(out).abs(), t))))
                continue
            weight = norm if score == "weighted" else 1.0
            hooks.append((modules[0], "pre", lambda _m, args, t=threshold, w=weight:
                          kept.append(fractions(args[0].abs() * w, t))))
    hand_logits(loaded, hooks, tokens(seed=99, batch=128, length=32))
    assert len(kept) == loaded.shape.num_layers * (1 if score == "gate" else 4)
    assert all(abs(k - min(1 - level, nonzero)) < 0.02 for k, nonzero in kept), kept


def test_a_sparse_forward_reports_what_it_kept(model):
    """The realised fractions of a TEAL forward: per slot the mean over tokens with its spread;
    the first selected input (layer 1's, after a dense layer 0) keeps about 1 - level, later
    ones see activations the masks already changed (reported, not forced)."""
    loaded, statistics = model
    runtime = runtime_for(loaded, "teal", statistics=statistics, level=0.4)
    masked_logits(loaded, runtime, tokens(seed=99, batch=8, length=24))
    row = runtime.account.summary()
    for slot in Slot:
        assert row[f"kept_p05/{slot.value}"] <= row[f"kept/{slot.value}"] <= row[f"kept_p95/{slot.value}"]
        assert 0.3 < row[f"kept/{slot.value}"] < 0.8
    assert row["selected_tokens"] == 8 * 24 and 0 < row["bytes_fraction"] < 1


def test_a_sink_keeps_its_positions_dense_and_nothing_else(model):
    loaded, statistics = model
    ids = tokens(3, batch=1)
    with torch.no_grad():
        dense = loaded.model(input_ids=ids).logits
    sunk = masked_logits(loaded, runtime_for(loaded, "teal", statistics=statistics, dense_positions=3), ids)
    plain = masked_logits(loaded, runtime_for(loaded, "teal", statistics=statistics), ids)
    torch.testing.assert_close(sunk[:, :3], dense[:, :3], rtol=0, atol=1e-6)
    assert not torch.allclose(sunk[:, 3:], dense[:, 3:]) and not torch.allclose(sunk[:, 3:], plain[:, 3:])


def test_layer_zero_is_selected_when_it_is_not_kept_dense(model):
    loaded, statistics = model
    ids = tokens(4, batch=1)
    chosen = {}
    for dense_first in (True, False):
        runtime = runtime_for(loaded, "teal", statistics=statistics, keep_first_layer_dense=dense_first)
        with runtime, torch.no_grad():
            loaded.model(input_ids=ids)
            chosen[dense_first] = runtime.masks.slots[Slot.mlp_input][0]
        chosen[f"bytes {dense_first}"] = runtime.account.summary()["bytes_fraction"]
    assert chosen[True] is None and chosen[False] is not None and chosen[False].mean() < 1
    assert chosen["bytes False"] < chosen["bytes True"]
