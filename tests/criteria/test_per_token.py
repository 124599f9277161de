"""Per-token criteria and samples: autograd on per-token masks, sums equal to the per-sequence
scores under the same loss, batch-invariant samples at seeded positions."""

import pytest
import torch

from shadow_sweep.config import CriterionConfig
from shadow_sweep.criteria.registry import get_criterion, per_token_criteria
from shadow_sweep.data.calibration import CalibrationExample, EncodedExample
from shadow_sweep.traces.collect import collect, sample_positions, score_batch
from tests.criteria.test_formulas import _masked_loss


def _language_model_examples(lengths=(11, 7), seed=0):
    """answer_start = 1: the answer loss is the language-model loss on every position."""
    generator = torch.Generator().manual_seed(seed)
    encoded = [EncodedExample(torch.randint(3, 300, (n,), generator=generator).tolist(), 1) for n in lengths]
    labels = [CalibrationExample("synthetic", i, "", "") for i in range(len(lengths))]
    return encoded, labels


def _every_position(encoded):
    return [list(range(len(e.input_ids) - 1)) for e in encoded]


@pytest.mark.parametrize("name", ["plainact", "snip", "fisher"])
def test_per_token_scores_equal_autograd_on_per_token_masks(tiny, name):
    """plainact = snip = |dL/dm_t|, fisher = 1/2 (dL/dm_t)^2 for a mask on one token and unit."""
    encoded, labels = _language_model_examples(lengths=(10,))
    _, tokens = score_batch(tiny, get_criterion(name), CriterionConfig(), encoded, labels, _every_position(encoded))
    s, length = tiny.shape, len(encoded[0].input_ids)
    heads = torch.ones(length, s.num_layers, s.num_heads, requires_grad=True)
    neurons = torch.ones(length, s.num_layers, s.num_neurons, requires_grad=True)
    head_grad, neuron_grad = torch.autograd.grad(_masked_loss(tiny, encoded[0], heads, neurons), [heads, neurons])
    form = {"plainact": torch.abs, "snip": torch.abs, "fisher": lambda g: 0.5 * g.square()}[name]
    torch.testing.assert_close(tokens.head_scores, form(head_grad[:-1]), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(tokens.neuron_scores, form(neuron_grad[:-1]), rtol=1e-4, atol=1e-7)
    assert tokens.position.tolist() == list(range(length - 1)) and (tokens.example == 0).all()


@pytest.mark.parametrize("name", ["plainact", "grasp", "l2_norm"])
def test_per_token_terms_sum_to_the_per_sequence_scores(tiny, name):
    """Under the same loss (the answer is every token) plainact's and grasp's per-sequence
    scores are their per-token terms summed over tokens (the last token's gradient is 0);
    l2_norm's per-sequence score is the root of its squared per-token terms over every token."""
    encoded, labels = _language_model_examples()
    positions = [list(range(len(e.input_ids))) for e in encoded] if name == "l2_norm" else _every_position(encoded)
    criterion = get_criterion(name)
    with_eager = tiny.model.config._attn_implementation
    tiny.model.set_attn_implementation("eager")  # double backward (grasp)
    try:
        sequence, tokens = score_batch(tiny, criterion, CriterionConfig(), encoded, labels, positions)
    finally:
        tiny.model.set_attn_implementation(with_eager)
    for row in range(len(encoded)):
        rows = tokens.example == row
        for per_token, per_sequence in ((tokens.head_scores, sequence.head_scores),
                                        (tokens.neuron_scores, sequence.neuron_scores)):
            summed = per_token[rows].square().sum(0).sqrt() if name == "l2_norm" else per_token[rows].sum(0)
            torch.testing.assert_close(summed, per_sequence[row], rtol=1e-4, atol=1e-6)


def test_per_token_samples_of_a_padded_batch_equal_each_example_alone(tiny):
    encoded, labels = _language_model_examples(lengths=(12, 6, 9))
    criterion = get_criterion("plainact")
    _, batched = collect(tiny, criterion, CriterionConfig(), encoded, labels, batch_size=3, progress=False,
                         positions_per_example=4)
    for row in range(3):
        _, alone = collect(tiny, criterion, CriterionConfig(), encoded[row:row + 1], labels[row:row + 1],
                           batch_size=1, progress=False, positions_per_example=4)
        mine = batched.example == row
        assert torch.equal(batched.position[mine], alone.position)
        for field in ("shadow_input", "dejavu_input", "head_scores", "neuron_scores"):
            torch.testing.assert_close(getattr(batched, field)[mine], getattr(alone, field), rtol=1e-4, atol=1e-5)


def test_positions_are_seeded_by_example_and_have_a_next_token():
    example = CalibrationExample("piqa", 17, "", "")
    chosen = sample_positions(example, 40, 8)
    assert chosen == sample_positions(example, 40, 8) and len(chosen) == 8 and max(chosen) <= 38
    assert chosen != sample_positions(CalibrationExample("piqa", 18, "", ""), 40, 8)
    assert sample_positions(example, 5, None) == [0, 1, 2, 3]


def test_criteria_without_a_per_token_form_record_no_samples_and_say_which_do(tiny):
    encoded, labels = _language_model_examples(lengths=(8,))
    _, tokens = collect(tiny, get_criterion("nwot"), CriterionConfig(), encoded, labels, 1, False, None)
    assert tokens is None
    assert per_token_criteria() == ["plainact", "snip", "fisher", "grad_norm", "grasp", "l2_norm"]
    with pytest.raises(ValueError, match="no per-token form.*plainact"):
        get_criterion("jacov").per_token(None)
