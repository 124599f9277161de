"""Shared contexts and scored logits: every request's score equals today's path (each request's
whole input, lm_head at every position), for every policy where sharing is exact."""

import pytest
import torch

from shadow_sweep.config import MaskUpdate, Prefill
from shadow_sweep.evaluation.lm import SparseLM
from shadow_sweep.evaluation.scoring import RequestScorer, ScoredRequest, context_groups
from tests.conftest import load_tiny
from tests.selectors.helpers import runtime_for, tiny_statistics


def _requests(seed: int = 5) -> list[tuple]:
    """Multiple-choice-like requests: 5 contexts of mixed lengths with 1 to 4 continuations of
    mixed lengths each (one context alone, one too short to be worth sharing, one continuation of
    one token)."""
    g = torch.Generator().manual_seed(seed)
    requests = []
    for context_length, choices in ((17, 4), (3, 2), (29, 1), (9, 3), (23, 4)):
        context = torch.randint(3, 250, (context_length,), generator=g).tolist()
        for choice in range(choices):
            length = 1 if (context_length, choice) == (9, 0) else 2 + (choice * 3 + context_length) % 6
            requests.append((None, context, torch.randint(3, 250, (length,), generator=g).tolist()))
    return requests


def _scores(loaded, runtime, batch_size, prefill, share, scored_logits=True):
    lm = SparseLM(loaded, batch_size, runtime=runtime, prefill=prefill, share_contexts=share,
                  scored_logits=scored_logits)
    return lm._loglikelihood_tokens(_requests(), disable_tqdm=True)


def _assert_equal(ours, reference):
    for (ll, greedy), (ref_ll, ref_greedy) in zip(ours, reference, strict=True):
        assert ll == pytest.approx(ref_ll, abs=1e-4) and greedy == ref_greedy


def test_groups_are_requests_with_equal_context_tokens_where_sharing_saves_tokens():
    scored = [ScoredRequest.of(c, t, 2048) for _, c, t in _requests()]
    groups, whole = context_groups(scored)
    assert sorted(map(len, groups)) == [3, 4, 4] and len(whole) == 3
    assert all(len({scored[i].inputs[:scored[i].split] for i in g}) == 1 for g in groups)
    short = [i for i in whole if scored[i].split == 2]  # a 3-token context before two longer continuations
    assert len(short) == 2 and 1 * 2 < sum(len(scored[i].targets) for i in short)
    assert all((len(g) - 1) * scored[g[0]].split >= sum(len(scored[i].targets) for i in g) for g in groups)
    truncated = ScoredRequest.of(list(range(10)), [7, 8, 9], max_length=6)
    assert truncated.inputs == (6, 7, 8, 9, 7, 8) and truncated.targets == (7, 8, 9) and truncated.split == 3


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-opt", "tiny-gemma3"])
@pytest.mark.parametrize("batch_size", [1, 8])
def test_dense_shared_contexts_score_as_each_whole_request(session_cache, model, batch_size):
    loaded = load_tiny(model, session_cache)
    reference = _scores(loaded, None, 1, Prefill.sparse, share=False, scored_logits=False)
    _assert_equal(_scores(loaded, None, batch_size, Prefill.sparse, share=True), reference)
    _assert_equal(_scores(loaded, None, batch_size, Prefill.sparse, share=False), reference)


SELECTED = [("shadowllm", {}), ("dejavu", {}), ("static", {}), ("random", {}), ("teal", {"statistics": True}),
            ("cats", {"statistics": True}), ("oracle", {})]


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-opt"])
@pytest.mark.parametrize("name, needs", SELECTED, ids=[name for name, _ in SELECTED])
@pytest.mark.parametrize("prefill", list(Prefill))
def test_per_token_shared_contexts_score_as_today_with_the_same_account(session_cache, model, name, needs,
                                                                         prefill):
    loaded = load_tiny(model, session_cache)
    statistics = tiny_statistics(loaded) if needs.get("statistics") else None
    runtime = runtime_for(loaded, name, statistics=statistics, dense_positions=1)
    with runtime:
        assert runtime.shares_contexts(prefill == Prefill.dense)
        for batch_size in (1, 8):
            reference = _scores(loaded, runtime, batch_size, prefill, share=False, scored_logits=False)
            today = runtime.account.summary()
            runtime.account.fractions.clear()
            runtime.account.bytes.clear()
            _assert_equal(_scores(loaded, runtime, batch_size, prefill, share=True), reference)
            shared = runtime.account.summary()
            runtime.account.fractions.clear()
            runtime.account.bytes.clear()
            assert shared["selected_tokens"] == today["selected_tokens"]
            for field in ("bytes_fraction", "kept/mlp_input", "kept/neuron_activation", "kept/head_context"):
                assert shared[field] == pytest.approx(today[field], abs=1e-6), field


@pytest.mark.parametrize("name", ["shadowllm", "random", "dejavu"])
def test_per_sequence_shares_a_dense_context_and_keeps_todays_path_for_a_sparse_one(session_cache, name,
                                                                                    monkeypatch):
    loaded = load_tiny("tiny-llama", session_cache)
    runtime = runtime_for(loaded, name, update=MaskUpdate.per_sequence)
    with runtime:
        assert runtime.shares_contexts(dense_context=True) and not runtime.shares_contexts(dense_context=False)
        reference = _scores(loaded, runtime, 8, Prefill.dense, share=False, scored_logits=False)
        _assert_equal(_scores(loaded, runtime, 8, Prefill.dense, share=True), reference)
        shared_calls = []
        monkeypatch.setattr(RequestScorer, "shared", lambda self, r, groups: shared_calls.append(groups) or iter(()))
        _scores(loaded, runtime, 8, Prefill.sparse, share=True)
    assert shared_calls == [[]]  # nothing shared: every request whole


def test_the_oracle_per_sequence_never_shares(session_cache):
    loaded = load_tiny("tiny-llama", session_cache)
    runtime = runtime_for(loaded, "oracle", update=MaskUpdate.per_sequence, criterion="plainact")
    assert not runtime.shares_contexts(dense_context=True)
