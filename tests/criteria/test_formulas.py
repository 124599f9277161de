"""Criteria against independent computations: autograd on explicit masks, direct formulas."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shadow_sweep.config import CriterionConfig, CriterionName
from shadow_sweep.criteria import activation, correlation
from shadow_sweep.criteria.registry import CRITERIA, get_criterion
from shadow_sweep.criteria.units import UnitTensors
from shadow_sweep.data.calibration import CalibrationExample, EncodedExample
from shadow_sweep.traces.collect import pad_batch, score_batch


def _examples(loaded, lengths=(9, 14), answer=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    encoded = [EncodedExample(torch.randint(3, 300, (n,), generator=generator).tolist(), n - answer) for n in lengths]
    labels = [CalibrationExample("synthetic", i, "", "") for i in range(len(lengths))]
    return encoded, labels


def _masked_loss(loaded, example, head_mask=None, neuron_mask=None):
    """The answer loss of one example with explicit multiplicative masks (leaf tensors) on
    the two tensors of every layer: heads [T, L, H] and neurons [T, L, I], all ones."""
    shape, handles = loaded.shape, []
    for layer, module in enumerate(loaded.adapter.head_context_modules(loaded.model)):
        if head_mask is not None:
            handles.append(module.register_forward_pre_hook(
                lambda _m, args, l=layer: (args[0].unflatten(-1, (shape.num_heads, shape.head_dim))
                                           * head_mask[None, :, l, :, None]).flatten(-2)))
    for layer, module in enumerate(loaded.adapter.neuron_activation_modules(loaded.model)):
        if neuron_mask is not None:
            handles.append(module.register_forward_pre_hook(
                lambda _m, args, l=layer: (args[0].view(1, -1, shape.num_neurons) * neuron_mask[None, :, l])
                .view(args[0].shape)))
    try:
        ids, valid, answer, _ = pad_batch([example], loaded.tokenizer.pad_token_id)
        logits = loaded.model(input_ids=ids).logits[0, :-1]
        return F.cross_entropy(logits, ids[0, 1:], reduction="none")[answer[0, 1:]].sum()
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("name", ["plainact", "snip", "fisher"])
def test_mask_gradient_criteria_equal_autograd_on_a_mask(tiny, name):
    """snip = |dL/dm|, fisher = 1/2 (dL/dm)^2 for one mask per unit; plainact = sum_t |dL/dm_t|
    for one mask per token and unit; each mask placed at 1 and differentiated by autograd."""
    encoded, labels = _examples(tiny, lengths=(12,))
    traced = score_batch(tiny, get_criterion(name), CriterionConfig(), encoded, labels)[0]
    s, tokens = tiny.shape, len(encoded[0].input_ids)
    heads = torch.ones(tokens, s.num_layers, s.num_heads, requires_grad=True)
    neurons = torch.ones(tokens, s.num_layers, s.num_neurons, requires_grad=True)
    head_grad, neuron_grad = torch.autograd.grad(_masked_loss(tiny, encoded[0], heads, neurons), [heads, neurons])
    reduce = {"plainact": lambda g: g.abs().sum(0), "snip": lambda g: g.sum(0).abs(),
              "fisher": lambda g: 0.5 * g.sum(0).square()}[name]
    torch.testing.assert_close(traced.head_scores[0], reduce(head_grad), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(traced.neuron_scores[0], reduce(neuron_grad), rtol=1e-4, atol=1e-7)


def test_grad_norm_equals_the_norm_of_autograd_gradients(tiny):
    encoded, labels = _examples(tiny, lengths=(12,))
    traced = score_batch(tiny, get_criterion("grad_norm"), CriterionConfig(), encoded, labels)[0]
    inputs = {}
    handles = [m.register_forward_pre_hook(lambda _m, args, l=l: inputs.__setitem__(l, args[0]))
               for l, m in enumerate(tiny.adapter.head_context_modules(tiny.model))]
    try:
        loss = _masked_loss(tiny, encoded[0])
        grads = torch.autograd.grad(loss, [inputs[l] for l in range(tiny.shape.num_layers)])
    finally:
        for handle in handles:
            handle.remove()
    expected = torch.stack([g[0].unflatten(-1, (tiny.shape.num_heads, -1)).pow(2).sum((0, 2)).sqrt() for g in grads])
    torch.testing.assert_close(traced.head_scores[0], expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_padded_batch_of_four_equals_each_example_alone(tiny, name):
    """Right padding plus a summed loss keep every example's scores its own (rtol 1e-3:
    batched kernels reorder float sums; grasp's second derivative is the loosest)."""
    encoded, labels = _examples(tiny, lengths=(7, 15, 10, 12))
    criterion = get_criterion(name)
    batched = score_batch(tiny, criterion, CriterionConfig(), encoded, labels)[0]
    for row in range(4):
        alone = score_batch(tiny, criterion, CriterionConfig(), encoded[row:row + 1], labels[row:row + 1])[0]
        for field in ("head_scores", "neuron_scores", "shadow_input", "dejavu_input"):
            torch.testing.assert_close(getattr(batched, field)[row], getattr(alone, field)[0], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_every_criterion_gives_finite_scores_of_the_right_shapes(tiny, name):
    encoded, labels = _examples(tiny, lengths=(20, 31, 26))
    out = score_batch(tiny, get_criterion(name), CriterionConfig(), encoded, labels)[0]
    s = tiny.shape
    assert out.head_scores.shape == (3, s.num_layers, s.num_heads)
    assert out.neuron_scores.shape == (3, s.num_layers, s.num_neurons)
    assert out.shadow_input.shape == (3, s.num_heads * s.head_dim)
    assert out.dejavu_input.shape == (3, s.num_layers, s.hidden_size)
    assert torch.isfinite(out.head_scores).all() and torch.isfinite(out.neuron_scores).all()
    assert out.head_scores.std() > 0 and out.neuron_scores.std() > 0


@pytest.mark.parametrize("name", ["l2_norm", "nwot"])
def test_activation_criteria_run_no_backward(tiny, name, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a backward pass ran")

    monkeypatch.setattr(torch.autograd, "grad", forbidden)
    monkeypatch.setattr(torch.Tensor, "backward", forbidden)
    encoded, labels = _examples(tiny)
    out = score_batch(tiny, get_criterion(name), CriterionConfig(), encoded, labels)[0]
    assert not out.head_scores.requires_grad and torch.isfinite(out.neuron_scores).all()


def _random_units(batch=2, tokens=9, units=3, k=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, tokens, units, k, generator=generator, dtype=torch.float64)
    g = torch.randn(batch, tokens, units, k, generator=generator, dtype=torch.float64)
    valid = torch.ones(batch, tokens, dtype=torch.bool)
    valid[1, 6:] = False
    targets = torch.randint(0, 3, (batch, tokens), generator=generator)
    return UnitTensors(a, valid, targets, g)


def test_nwot_equals_the_log_determinant_of_the_token_kernel():
    x = _random_units()
    scores = activation.nwot(x)
    for b in range(2):
        n = int(x.valid[b].sum())
        for u in range(3):
            codes = (x.a[b, :n, u] > 0).double()
            kernel = codes @ codes.T + (1 - codes) @ (1 - codes).T
            expected = torch.logdet(torch.eye(n, dtype=torch.float64) + kernel)
            assert scores[b, u].item() == pytest.approx(expected.item(), rel=1e-9)


def test_nwot_for_a_neuron_is_log_one_plus_counts():
    a = torch.tensor([[0.5, -1.0, 2.0, 0.0, 3.0]]).reshape(1, 5, 1, 1)
    x = UnitTensors(a, torch.ones(1, 5, dtype=torch.bool), torch.zeros(1, 5, dtype=torch.long))
    assert activation.nwot(x).item() == pytest.approx(math.log(1 + 3) + math.log(1 + 2), rel=1e-6)


def test_jacov_equals_numpy_corrcoef_spectrum_without_the_shared_zero_terms():
    x = _random_units(tokens=4, k=6)  # T < k: every eigenvalue of the T x T matrix counts
    eps = 1e-5
    scores = correlation.jacov(x, eps)
    for b in range(2):
        n = int(x.valid[b].sum())
        for u in range(3):
            corr = np.corrcoef(x.g[b, :n, u].numpy())
            v = np.clip(np.linalg.eigvalsh(corr), 0, None)
            expected = -np.sum(np.log(v + eps) + 1 / (v + eps))
            assert scores[b, u].item() == pytest.approx(expected, rel=1e-6)


def test_epenas_equals_a_direct_per_class_computation():
    x = _random_units(tokens=12, k=5)
    eps = 1e-5
    scores = correlation.epenas(x, eps, min_class_size=2)
    b, u = 0, 1
    per_class = []
    for c in sorted(set(x.targets[b].tolist())):
        rows = x.g[b, x.targets[b] == c, u].numpy()
        if len(rows) >= 2:
            per_class.append(np.sum(np.log(np.abs(np.corrcoef(rows)) + eps)))
    expected = sum(abs(p - q) for i, p in enumerate(per_class) for q in per_class[i + 1:])
    assert scores[b, u].item() == pytest.approx(expected, rel=1e-6)


def test_unknown_criterion_lists_the_options():
    with pytest.raises(ValueError, match="plainact.*epenas"):
        get_criterion("magic")
    assert sorted(c.value for c in CriterionName) == sorted(CRITERIA)
