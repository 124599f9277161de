"""Errors of points and paired differences against independent computations."""

import math

import numpy as np
import pytest
from lm_eval.api.metrics import mean_stderr as lm_eval_mean_stderr

from shadow_sweep.statistics import (bootstrap_ratio_ci, mean_stderr, paired_difference, paired_ratio_difference,
                                     two_stage_paired_difference,
                                     stderr_of_mean_of_means)


def test_mean_stderr_is_lm_evals():
    outcomes = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    assert mean_stderr(outcomes) == pytest.approx(lm_eval_mean_stderr(outcomes))


def test_stderr_of_a_mean_of_task_means_matches_simulation():
    rng = np.random.default_rng(0)
    sizes, rates = (40, 80, 160), (0.3, 0.5, 0.7)
    means = [np.mean([rng.binomial(1, p, n).mean() for n, p in zip(sizes, rates)]) for _ in range(20000)]
    stderrs = [math.sqrt(p * (1 - p) / n) for n, p in zip(sizes, rates)]
    assert stderr_of_mean_of_means(stderrs) == pytest.approx(np.std(means), rel=0.03)


def _outcomes(rng, documents: int, shift: float) -> tuple[dict, dict]:
    a, b = {}, {}
    for task in ("copa", "piqa"):
        base = rng.normal(0.0, 1.0, documents)
        a[task] = {i: float(v + shift + rng.normal(0, 0.5)) for i, v in enumerate(base)}
        b[task] = {i: float(v) for i, v in enumerate(base)}
    return a, b


def test_paired_difference_covers_a_known_difference_and_narrows_with_documents():
    rng = np.random.default_rng(1)
    small = paired_difference(*_outcomes(rng, 50, 0.3), seed=0)
    large = paired_difference(*_outcomes(rng, 800, 0.3), seed=0)
    for result in (small, large):
        assert result.low < 0.3 < result.high and result.excludes_zero
    assert (large.high - large.low) < 0.5 * (small.high - small.low)
    assert large.documents == 1600


def test_paired_difference_of_identical_points_is_exactly_zero():
    a, _ = _outcomes(np.random.default_rng(2), 30, 0.0)
    result = paired_difference(a, a)
    assert (result.difference, result.low, result.high) == (0.0, 0.0, 0.0) and not result.excludes_zero


def test_paired_difference_refuses_unequal_document_sets():
    a, b = _outcomes(np.random.default_rng(3), 10, 0.0)
    del b["piqa"][3]
    with pytest.raises(ValueError, match="same tasks and document ids"):
        paired_difference(a, b)


def test_ratio_ci_is_seeded_and_covers_the_ratio():
    rng = np.random.default_rng(4)
    tokens = rng.integers(200, 600, 40).astype(float)
    nll = tokens * rng.normal(3.0, 0.3, 40)
    low, high = bootstrap_ratio_ci(nll.tolist(), tokens.tolist(), seed=7)
    assert low < nll.sum() / tokens.sum() < high
    assert (low, high) == bootstrap_ratio_ci(nll.tolist(), tokens.tolist(), seed=7)


def test_two_stage_bootstrap_is_the_paired_one_with_one_seed_and_wider_with_seed_spread():
    rng = np.random.default_rng(5)
    a, b = _outcomes(rng, 200, 0.3)
    one = {t: np.array([[a[t][i] for i in sorted(a[t])]]) for t in a}
    other = {t: np.array([[b[t][i] for i in sorted(b[t])]]) for t in b}
    two_stage = two_stage_paired_difference(one, other, seed=0)
    plain = paired_difference(a, b, seed=0)
    assert two_stage.difference == pytest.approx(plain.difference)
    assert two_stage.low == pytest.approx(plain.low, abs=0.03) and two_stage.high == pytest.approx(plain.high, abs=0.03)
    # three seeds of side a, each shifted as training noise would: the CI must widen to cover it
    seeded = {t: one[t] + np.array([[-0.3], [0.0], [0.3]]) for t in one}
    spread = two_stage_paired_difference(seeded, other, seed=0)
    assert spread.difference == pytest.approx(plain.difference)
    assert (spread.high - spread.low) > 2 * (plain.high - plain.low)


def test_one_unit_has_no_interval_and_is_never_resolved():
    low, high = bootstrap_ratio_ci([120.0], [40.0])
    assert math.isnan(low) and math.isnan(high)
    one = paired_ratio_difference([120.0], [100.0], [40.0])
    assert one.difference == pytest.approx(0.5) and math.isnan(one.low) and not one.excludes_zero
