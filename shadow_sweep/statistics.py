"""Errors of measured points and of differences between them, from per-document outcomes.

- `mean_stderr(x)`: s / sqrt(n) with the sample standard deviation (ddof 1): lm-eval's
  `acc_stderr` for a mean metric.
- `stderr_of_mean_of_means(se)`: sqrt(sum_k se_k^2) / K, the stderr of an unweighted mean of
  K independent task means (`acc_mean`).
- `bootstrap_ratio_ci(num, den)`: a seeded percentile bootstrap of sum(num) / sum(den) over
  resampled units (documents, or windows when there are few documents): the CI of a
  perplexity's log, exp'd by the caller.
- `paired_difference(a, b)`: per task, outcomes of two points on the SAME documents; the
  difference of their mean-over-tasks, with a bootstrap that resamples documents within each
  task (stratified) and keeps each document's two outcomes together (paired).
- `paired_ratio_difference(a, b, den)`: (sum a - sum b) / sum den over paired units, e.g. the
  difference of two log perplexities on the same windows.
- `two_stage_paired_difference(a, b)`: the same with several seeds a side: seeds resampled,
  then documents (scipy has no two-stage bootstrap: hand-written, numpy).
Bootstraps are scipy.stats.bootstrap's percentile intervals, seeded: the same inputs give the
same CI.
"""

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.stats import bootstrap

CONFIDENCE = 0.95
BOOTSTRAP_ITERATIONS = 2000


def mean_stderr(values: list[float]) -> float:
    """s / sqrt(n), s with ddof 1 (lm-eval's `mean_stderr`); 0 for fewer than two values."""
    if len(values) < 2:
        return 0.0
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


def stderr_of_mean_of_means(stderrs: list[float]) -> float:
    """sqrt(sum se_k^2) / K for the unweighted mean of K independent means."""
    return math.sqrt(sum(se * se for se in stderrs)) / len(stderrs)


def bootstrap_ratio_ci(numerators: list[float], denominators: list[float], seed: int = 0,
                       iterations: int = BOOTSTRAP_ITERATIONS) -> tuple[float, float]:
    """95% percentile CI of sum(num) / sum(den) over units resampled with replacement, each
    unit's numerator and denominator together (scipy.stats.bootstrap, paired); (nan, nan) for
    fewer than two units (nothing to resample)."""
    data = (np.asarray(numerators, dtype=np.float64), np.asarray(denominators, dtype=np.float64))
    if len(data[0]) < 2:
        return math.nan, math.nan
    result = bootstrap(data, lambda num, den, axis: num.sum(axis) / den.sum(axis), paired=True, vectorized=True,
                       n_resamples=iterations, method="percentile", confidence_level=CONFIDENCE, rng=seed)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


@dataclass(frozen=True)
class PairedDifference:
    difference: float  # mean over tasks of (a - b) per task
    low: float  # 95% bootstrap CI
    high: float
    documents: int  # paired documents, all tasks

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def _mean_of_means(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean([x.mean(axis) for x in samples], axis=0)


def paired_difference(a: dict[str, dict[int, float]], b: dict[str, dict[int, float]], seed: int = 0,
                      iterations: int = BOOTSTRAP_ITERATIONS) -> PairedDifference:
    """a, b: {task: {document id: outcome}} of two points. Each task's per-document differences
    are one sample of scipy.stats.bootstrap, resampled on its own (stratified by task); the
    statistic is the mean over tasks of each task's mean difference. Refuses unequal
    document sets."""
    if set(a) != set(b) or any(set(a[t]) != set(b[t]) for t in a):
        raise ValueError("paired comparison needs the same tasks and document ids on both sides")
    differences = [np.array([a[t][i] - b[t][i] for i in sorted(a[t])], dtype=np.float64) for t in sorted(a)]
    observed = float(_mean_of_means(*differences))
    if all(np.ptp(d) == 0 for d in differences):  # every resample gives the observed value
        return PairedDifference(observed, observed, observed, sum(len(d) for d in differences))
    result = bootstrap(differences, _mean_of_means, vectorized=True, n_resamples=iterations, method="percentile",
                       confidence_level=CONFIDENCE, rng=seed)
    interval = result.confidence_interval
    return PairedDifference(observed, float(interval.low), float(interval.high), sum(len(d) for d in differences))


def paired_ratio_difference(numerators_a: list[float], numerators_b: list[float], denominators: list[float],
                            seed: int = 0, iterations: int = BOOTSTRAP_ITERATIONS) -> PairedDifference:
    """(sum a - sum b) / sum den over paired units (the difference of two log perplexities over
    the same windows or documents), with a 95% bootstrap CI resampling units, each unit's
    three numbers together."""
    data = tuple(np.asarray(x, dtype=np.float64) for x in (numerators_a, numerators_b, denominators))
    observed = float((data[0].sum() - data[1].sum()) / data[2].sum())
    if np.array_equal(data[0], data[1]):
        return PairedDifference(observed, observed, observed, len(data[0]))
    if len(data[0]) < 2:  # one unit: nothing to resample
        return PairedDifference(observed, math.nan, math.nan, 1)
    result = bootstrap(data, lambda a, b, den, axis: (a.sum(axis) - b.sum(axis)) / den.sum(axis), paired=True,
                       vectorized=True, n_resamples=iterations, method="percentile", confidence_level=CONFIDENCE,
                       rng=seed)
    interval = result.confidence_interval
    return PairedDifference(observed, float(interval.low), float(interval.high), len(data[0]))


def two_stage_paired_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray],
                                denominators: Optional[dict[str, np.ndarray]] = None, seed: int = 0,
                                iterations: int = BOOTSTRAP_ITERATIONS) -> PairedDifference:
    """Seeds and documents both resampled. a[s], b[s]: outcomes [seeds, units] of stratum s
    (a task, or the perplexity's windows) for each side's seeds; the statistic is the mean over
    strata of sum(mean_seeds(a) - mean_seeds(b)) / sum(den) over the stratum's units (den = 1:
    the mean difference; den = tokens: a difference of log perplexities). Each iteration draws
    each side's seeds with replacement, then the stratum's units with replacement, the same
    units for both sides (paired). With one seed a side it is the plain paired bootstrap."""
    rng = np.random.default_rng(seed)
    observed, samples = [], np.zeros(iterations)
    for stratum in sorted(a):
        den = np.ones(a[stratum].shape[1]) if denominators is None else np.asarray(denominators[stratum], float)
        observed.append((a[stratum].mean(0) - b[stratum].mean(0)).sum() / den.sum())
        seeds_a = rng.integers(0, len(a[stratum]), size=(iterations, len(a[stratum])))
        seeds_b = rng.integers(0, len(b[stratum]), size=(iterations, len(b[stratum])))
        difference = a[stratum][seeds_a].mean(1) - b[stratum][seeds_b].mean(1)  # [iterations, units]
        units = rng.integers(0, len(den), size=(iterations, len(den)))
        samples += np.take_along_axis(difference, units, 1).sum(1) / den[units].sum(1)
    samples /= len(a)
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return PairedDifference(float(np.mean(observed)), float(low), float(high), sum(x.shape[1] for x in a.values()))
