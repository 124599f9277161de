"""The sparsity policy keeps exact counts, honours its options, and rejects impossible pools."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shadow_sweep.config import ConfigError, HeadGranularity, Ranking, SparsityConfig
from shadow_sweep.models.adapters import ModelShape
from shadow_sweep.sparsity.policy import SparsityPolicy
from shadow_sweep.sparsity.topk import keep_count

SHAPE = ModelShape(num_layers=5, num_heads=8, num_kv_heads=2, head_dim=4, num_neurons=24, hidden_size=32)


def _scores(batch=3, shape=SHAPE, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, shape.num_layers, shape.num_heads, generator=g),
            torch.rand(batch, shape.num_layers, shape.num_neurons, generator=g))


def _policy(**kwargs) -> SparsityPolicy:
    ranking = kwargs.pop("ranking", "global")
    return SparsityPolicy(SparsityConfig(ranking=Ranking[ranking], **kwargs), SHAPE)


@settings(max_examples=200, deadline=None)
@given(level=st.floats(0.0, 0.85), ranking=st.sampled_from(["global", "per_layer"]), dense_first=st.booleans(),
       groups=st.booleans(), layers=st.integers(2, 6), heads=st.sampled_from([4, 8, 12]),
       neurons=st.integers(8, 40))
def test_kept_counts_are_exact(level, ranking, dense_first, groups, layers, heads, neurons):
    shape = ModelShape(layers, heads, 2, 4, neurons, 16)
    cfg = SparsityConfig(level=level, ranking=Ranking[ranking], keep_first_layer_dense=dense_first,
                         head_granularity=HeadGranularity.kv_group if groups else HeadGranularity.query_head)
    try:
        policy = SparsityPolicy(cfg, shape)
    except ConfigError:
        return  # a pool that would keep nothing: rejected up front (tested below)
    head_mask, neuron_mask = policy.masks(*_scores(2, shape))
    first = 1 if dense_first else 0
    group = shape.queries_per_kv if groups else 1  # 2 K/V heads: groups of heads // 2 query heads
    units = heads // group
    pooled = layers - first
    assert (head_mask[:, :first] == 1).all() and (neuron_mask[:, :first] == 1).all()
    kept_heads = head_mask[:, first:].sum((1, 2)) / group
    kept_neurons = neuron_mask[:, first:].sum((1, 2))
    if ranking == "global":
        assert (kept_heads == keep_count(level, pooled * units)).all()
        assert (kept_neurons == keep_count(level, pooled * neurons)).all()
    else:
        assert (head_mask[:, first:].sum(-1) == keep_count(level, units) * group).all()
        assert (neuron_mask[:, first:].sum(-1) == keep_count(level, neurons)).all()
    if groups:  # a K/V group is kept or skipped whole
        assert (head_mask.unflatten(-1, (-1, group)).std(-1) == 0).all()


def test_level_zero_is_exactly_dense():
    heads, neurons = _policy(level=0.0).masks(*_scores())
    assert (heads == 1).all() and (neurons == 1).all()


def test_global_ranking_keeps_the_highest_scores():
    heads, _ = _scores(1)
    mask, _ = _policy(level=0.5, keep_first_layer_dense=False).masks(heads, torch.rand(1, 5, 24))
    kept, dropped = heads[mask.bool()], heads[~mask.bool()]
    assert kept.min() > dropped.max() and mask.sum() == 20


def test_per_layer_minimum_is_reserved_under_global_ranking():
    heads = torch.zeros(1, 5, 8)
    heads[:, 1] = 10.0  # layer 1 dominates the global ranking
    mask, _ = _policy(level=0.75, min_heads_per_layer=1).masks(heads, torch.rand(1, 5, 24))
    assert (mask[0, 1:].sum(-1) >= 1).all() and mask[0, 1:].sum() == keep_count(0.75, 32)


def test_separate_levels_for_heads_and_neurons():
    heads, neurons = _policy(level=0.5, head_level=0.25, neuron_level=0.75, ranking="per_layer").masks(*_scores())
    assert (heads[:, 1:].sum(-1) == 6).all() and (neurons[:, 1:].sum(-1) == 6).all()


@pytest.mark.parametrize("kwargs, field", [(dict(level=1.0), "sparsity.head_level"),
                                           (dict(level=-0.1), "sparsity.head_level"),
                                           (dict(level=0.5, neuron_level=1.2), "sparsity.neuron_level"),
                                           (dict(level=0.95, ranking="per_layer"), "sparsity.head_level"),
                                           (dict(level=0.5, min_heads_per_layer=5), "min_heads_per_layer")])
def test_impossible_levels_fail_before_evaluation(kwargs, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        _policy(**kwargs)


def test_per_layer_budgets_realise_the_global_allocation():
    policy = _policy(level=0.5)
    mean_heads, mean_neurons = (s[0] for s in _scores(1))
    head_budget, neuron_budget = policy.budgets_from(mean_heads, mean_neurons)
    global_heads, _ = policy.masks(mean_heads[None], mean_neurons[None])
    assert torch.equal(head_budget, global_heads[0].sum(-1).long())
    heads, neurons = _scores(4, seed=3)
    per_layer = torch.stack([policy.layer_masks(l, heads[:, l], neurons[:, l], (head_budget, neuron_budget))[0]
                             for l in range(5)], 1)
    assert torch.equal(per_layer.sum(-1)[0], head_budget.float()) and per_layer.sum() == 4 * head_budget.sum()


def _indices(mask: torch.Tensor) -> list[torch.Tensor]:
    return [row.nonzero().squeeze(1) for row in mask.bool()]


@pytest.mark.parametrize("ranking, budgeted", [("per_layer", False), ("global", False), ("global", True)])
@pytest.mark.parametrize("granularity", list(HeadGranularity))
@pytest.mark.parametrize("level", [0.0, 0.5, 0.75])
def test_kept_indices_are_the_units_the_masks_keep(ranking, budgeted, granularity, level):
    """One token's kept units as ascending indices (the decode path's rows) == the masks' nonzero,
    for all layers at once and one layer at a time, under every ranking rule."""
    policy = _policy(level=level, ranking=ranking, head_granularity=granularity)
    heads, neurons = _scores(1, seed=7)
    budgets = policy.budgets_from(*(s[0] for s in _scores(1, seed=8))) if budgeted else None
    head_mask, neuron_mask = policy.masks(heads, neurons, budgets)
    if budgeted:  # masks with budgets are what per-layer decisions give: compare with those
        per_layer = [policy.layer_masks(l, heads[:, l], neurons[:, l], budgets) for l in range(SHAPE.num_layers)]
        head_mask = torch.stack([h for h, _ in per_layer], 1)
        neuron_mask = torch.stack([n for _, n in per_layer], 1)
    kept_heads, kept_neurons = policy.kept(heads[0], neurons[0], budgets)
    for layer in range(SHAPE.num_layers):
        assert torch.equal(kept_heads[layer], _indices(head_mask[0])[layer]), layer
        assert torch.equal(kept_neurons[layer], _indices(neuron_mask[0])[layer]), layer
        if ranking == "global" and not budgeted:
            continue  # one layer alone cannot realise a global ranking
        alone = policy.layer_kept(layer, heads[0, layer], neurons[0, layer], budgets)
        assert torch.equal(alone[0], kept_heads[layer]) and torch.equal(alone[1], kept_neurons[layer]), layer
