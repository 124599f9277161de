"""Per-token masks inside the forward: causal, batch-invariant, exact at level 0, one network
call per forward (ShadowLLM) or per layer (DejaVu)."""

import pytest
import torch

from shadow_sweep.config import (CriterionConfig, MaskUpdate, PredictorConfig, PredictorName, Ranking,
                                 SparsityConfig)
from shadow_sweep.criteria.registry import get_criterion
from shadow_sweep.predictors.fit import fit
from shadow_sweep.predictors.runtime import ContextualMasks
from shadow_sweep.predictors.sources import hashed_uniform
from shadow_sweep.sparsity.policy import SparsityPolicy
from tests.conftest import load_tiny
from tests.predictors.test_predictors import synthetic_traces

CAUSAL_KINDS = [PredictorName.shadowllm, PredictorName.dejavu, PredictorName.static, PredictorName.random,
                PredictorName.oracle]
RANKINGS = ["per_layer", "global"]


@pytest.fixture(params=["tiny-llama", "tiny-opt"])
def model(request, session_cache):
    loaded = load_tiny(request.param, session_cache)
    return loaded, synthetic_traces(loaded.shape, 64)


def runtime_for(loaded, traces, kind, update, level=0.5, ranking="per_layer") -> ContextualMasks:
    fitted = fit(traces, PredictorConfig(name=kind, epochs=3), loaded.shape)
    policy = SparsityPolicy(SparsityConfig(level=level, ranking=Ranking[ranking]), loaded.shape)
    oracle = (get_criterion("l2_norm"), CriterionConfig())
    return ContextualMasks(loaded, fitted, policy, seed=3, oracle=oracle, update=update)


def tokens(seed: int, length: int = 16, batch: int = 1) -> torch.Tensor:
    return torch.randint(3, 300, (batch, length), generator=torch.Generator().manual_seed(seed))


def logits(loaded, runtime, ids, attention=None) -> torch.Tensor:
    with runtime, torch.no_grad():
        return loaded.model(input_ids=ids, attention_mask=attention).logits


@pytest.mark.parametrize("ranking", RANKINGS)
@pytest.mark.parametrize("kind", CAUSAL_KINDS)
def test_per_token_masks_are_causal(model, kind, ranking):
    """Changing the tokens after position t never changes the logits at positions <= t."""
    loaded, traces = model
    ids = tokens(0)
    changed = ids.clone()
    changed[0, 9:] = tokens(1)[0, 9:]
    runtime = runtime_for(loaded, traces, kind, MaskUpdate.per_token, ranking=ranking)
    before = logits(loaded, runtime, ids)
    after = logits(loaded, runtime, changed)
    torch.testing.assert_close(before[:, :9], after[:, :9], rtol=0, atol=1e-6)
    assert not torch.allclose(before[:, 9:], after[:, 9:])


@pytest.mark.parametrize("kind", [PredictorName.shadowllm, PredictorName.dejavu, PredictorName.random])
def test_per_sequence_masks_let_later_tokens_change_earlier_positions(model, kind):
    loaded, traces = model
    ids = tokens(0)
    changed = ids.clone()
    changed[0, 9:] = tokens(1)[0, 9:]
    runtime = runtime_for(loaded, traces, kind, MaskUpdate.per_sequence)
    before = logits(loaded, runtime, ids)
    after = logits(loaded, runtime, changed)
    assert not torch.allclose(before[:, :9], after[:, :9])


@pytest.mark.parametrize("ranking", RANKINGS)
@pytest.mark.parametrize("kind", CAUSAL_KINDS)
def test_a_mixed_length_batch_scores_each_row_as_alone(model, kind, ranking):
    loaded, traces = model
    ids = tokens(2, length=14, batch=3)
    attention = torch.ones_like(ids)
    attention[1, 10:] = 0
    attention[2, 6:] = 0
    runtime = runtime_for(loaded, traces, kind, MaskUpdate.per_token, ranking=ranking)
    batched = logits(loaded, runtime, ids, attention)
    for row in range(3):
        keep = attention[row].bool()
        alone = logits(loaded, runtime, ids[row:row + 1, keep])
        torch.testing.assert_close(alone[0], batched[row, keep], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", CAUSAL_KINDS)
def test_level_zero_is_exactly_dense(model, kind):
    loaded, traces = model
    ids = tokens(4)
    with torch.no_grad():
        dense = loaded.model(input_ids=ids).logits
    masked = logits(loaded, runtime_for(loaded, traces, kind, MaskUpdate.per_token, level=0.0), ids)
    assert torch.equal(masked, dense)


def test_per_token_masks_keep_the_level_and_differ_between_tokens(model):
    loaded, traces = model
    runtime = runtime_for(loaded, traces, PredictorName.random, MaskUpdate.per_token)
    with runtime, torch.no_grad():
        loaded.model(input_ids=tokens(5))
        heads, neurons = runtime.masks.stacked()  # [1, T, L, U]
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


@pytest.mark.parametrize("kind, calls", [(PredictorName.shadowllm, 1), (PredictorName.dejavu, 2)])
def test_network_calls_per_forward(model, kind, calls):
    """ShadowLLM: one call over all B x T tokens; DejaVu: one per predicted layer (2 of 3)."""
    loaded, traces = model
    runtime = runtime_for(loaded, traces, kind, MaskUpdate.per_token)
    logits(loaded, runtime, tokens(6, batch=2))
    assert runtime.network_calls == calls
