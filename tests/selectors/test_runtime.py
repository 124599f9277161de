"""Per-token masks inside the forward, for every selector and mixes of them: causal,
batch-invariant, exact at level 0; one network call per forward (ShadowLLM) or per layer
(DejaVu)."""

import pytest
import torch

from shadow_sweep.cache import StageCache
from shadow_sweep.config import MaskUpdate
from shadow_sweep.selectors.random import hashed_uniform
from shadow_sweep.selectors.runtime import last_real_token
from tests.conftest import load_tiny
from tests.selectors.helpers import runtime_for, synthetic_traces, tiny_statistics

# (predictor.name, predictor.heads, predictor.neurons)
PER_TOKEN_POINTS = [("shadowllm", None, None), ("dejavu", None, None), ("static", None, None), ("random", None, None),
                    ("oracle", None, None), ("teal", None, None), ("wina", None, None), ("cats", None, None),
                    ("dejavu", None, "dejavu_mlp"), ("shadowllm", None, "cats"), ("cats", "teal", None)]
RANKINGS = ["per_layer", "global"]


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-opt"])
def model(request, tmp_path_factory):
    """A tiny model with synthetic traces, its calibration statistics and a cache of fits."""
    loaded = load_tiny(request.param, StageCache(tmp_path_factory.mktemp("cache")))
    return loaded, synthetic_traces(loaded.shape, 64), tiny_statistics(loaded), {}


def runtime(model, point, update=MaskUpdate.per_token, **options):
    loaded, traces, statistics, fits = model
    name, heads, neurons = point
    return runtime_for(loaded, name, traces, heads=heads, neurons=neurons, update=update, statistics=statistics,
                       fits=fits, **options)


def tokens(seed: int, length: int = 16, batch: int = 1) -> torch.Tensor:
    return torch.randint(3, 300, (batch, length), generator=torch.Generator().manual_seed(seed))


def logits(loaded, runtime, ids, attention=None) -> torch.Tensor:
    with runtime, torch.no_grad():
        return loaded.model(input_ids=ids, attention_mask=attention).logits


def name_of(point) -> str:
    return "+".join(p for p in point if p)


@pytest.mark.parametrize("ranking", RANKINGS)
@pytest.mark.parametrize("point", PER_TOKEN_POINTS, ids=name_of)
def test_per_token_masks_are_causal(model, point, ranking):
    """Changing the tokens after position t never changes the logits at positions <= t."""
    loaded = model[0]
    ids = tokens(0)
    changed = ids.clone()
    changed[0, 9:] = tokens(1)[0, 9:]
    before = logits(loaded, runtime(model, point, ranking=ranking), ids)
    after = logits(loaded, runtime(model, point, ranking=ranking), changed)
    torch.testing.assert_close(before[:, :9], after[:, :9], rtol=0, atol=1e-6)
    assert not torch.allclose(before[:, 9:], after[:, 9:])


@pytest.mark.parametrize("kind", ["shadowllm", "dejavu", "random"])
def test_per_sequence_masks_let_later_tokens_change_earlier_positions(model, kind):
    loaded = model[0]
    ids = tokens(0)
    changed = ids.clone()
    changed[0, 9:] = tokens(1)[0, 9:]
    before = logits(loaded, runtime(model, (kind, None, None), MaskUpdate.per_sequence), ids)
    after = logits(loaded, runtime(model, (kind, None, None), MaskUpdate.per_sequence), changed)
    assert not torch.allclose(before[:, :9], after[:, :9])


@pytest.mark.parametrize("ranking", RANKINGS)
@pytest.mark.parametrize("point", PER_TOKEN_POINTS, ids=name_of)
def test_a_mixed_length_batch_scores_each_row_as_alone(model, point, ranking):
    loaded = model[0]
    ids = tokens(2, length=14, batch=3)
    attention = torch.ones_like(ids)
    attention[1, 10:] = 0
    attention[2, 6:] = 0
    batched = logits(loaded, runtime(model, point, ranking=ranking), ids, attention)
    for row in range(3):
        keep = attention[row].bool()
        alone = logits(loaded, runtime(model, point, ranking=ranking), ids[row:row + 1, keep])
        torch.testing.assert_close(alone[0], batched[row, keep], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("point", PER_TOKEN_POINTS, ids=name_of)
def test_level_zero_is_exactly_dense(model, point):
    loaded = model[0]
    ids = tokens(4)
    with torch.no_grad():
        dense = loaded.model(input_ids=ids).logits
    assert torch.equal(logits(loaded, runtime(model, point, level=0.0), ids), dense)


def test_per_token_masks_keep_the_level_and_differ_between_tokens(model):
    loaded = model[0]
    selection = runtime(model, ("random", None, None))
    with selection, torch.no_grad():
        loaded.model(input_ids=tokens(5))
        heads, neurons = selection.masks.stacked()  # [1, T, L, U]
    shape = loaded.shape
    assert heads.shape == (1, 16, shape.num_layers, shape.num_heads)
    assert (heads[:, :, 1:].sum(-1) == shape.num_heads // 2).all()
    assert (neurons[:, :, 0] == 1).all()  # layer 0 dense
    distinct = {tuple(neurons[0, t, 1].tolist()) for t in range(16)}
    assert len(distinct) > 8


def test_hashed_scores_depend_on_token_position_and_seed_only():
    ids = torch.tensor([[5, 7, 5, 7]])
    positions = torch.arange(4)[None]
    scores = hashed_uniform(0, ids, positions, layer=2, units=64)
    assert scores.shape == (1, 4, 64) and 0 <= scores.min() and scores.max() < 1
    assert not torch.equal(scores[0, 0], scores[0, 2])  # same token, another position
    again = hashed_uniform(0, ids[:, 2:], positions[:, 2:], layer=2, units=64)
    assert torch.equal(again[0], scores[0, 2:])
    assert not torch.equal(hashed_uniform(1, ids, positions, 2, 64), scores)
    assert abs(float(hashed_uniform(0, torch.arange(4000)[None], positions.new_zeros(1, 4000), 1, 8).mean())
               - 0.5) < 0.02


@pytest.mark.parametrize("update", [MaskUpdate.per_token, MaskUpdate.per_sequence])
@pytest.mark.parametrize("kind, calls", [("shadowllm", 1), ("dejavu", 2)])
def test_network_calls_per_forward(model, kind, calls, update):
    """ShadowLLM: one call over all B x T tokens; DejaVu: one per predicted layer (2 of 3)."""
    loaded = model[0]
    selection = runtime(model, (kind, None, None), update)
    logits(loaded, selection, tokens(6, batch=2))
    assert selection.network_calls == calls


def test_last_real_token_handles_left_and_right_padding():
    attention = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_real_token(attention, 3, 5, "cpu").tolist() == [2, 4, 4]
