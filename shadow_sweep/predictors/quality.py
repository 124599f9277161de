"""Predictor quality on held-out traces: Spearman rank correlation and top-k recall.

Both are computed per row (example or token) within one layer (the unit ranking a per-layer
decision uses) and averaged over rows; `layer_*` keeps one value per layer, `*_mean` their mean.
Ties (common after the fp16 trace cast, e.g. many exact zeros) get average ranks, as
scipy.stats.spearmanr gives them. A (row, layer) whose target is constant has no ranking: it is
left out of both metrics and counted in `*_constant_rows`.
Recall under ties in the target: the true top-k set is every unit above the k-th largest
target plus, for the units tied at it, their expected share under a random tie-break, so the
recall is E[|predicted top-k ∩ true top-k|] / k over those tie-breaks.
"""

import numpy as np
import torch
from scipy.stats import rankdata


def ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks 1..U along the last dimension (ties share their mean rank)."""
    return torch.from_numpy(rankdata(x.double().numpy(), axis=-1, method="average"))


def constant(target: torch.Tensor) -> torch.Tensor:
    """[N, L] True where a row's targets in a layer are all equal (no ranking to recover)."""
    return target.amax(-1) == target.amin(-1)


def _row_mean(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """[N, L] -> [L]: mean over the rows kept in each layer (NaN for a layer with none)."""
    kept = keep.double()
    return (torch.where(keep, values, 0.0) * kept).sum(0) / kept.sum(0)


def spearman(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[N, L, U] -> [L]: mean over rows of the Spearman correlation within each layer."""
    a, b = ranks(predicted), ranks(target)
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    rho = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)
    return _row_mean(rho, ~constant(target))


def true_top_k_weights(target: torch.Tensor, keep: int) -> torch.Tensor:
    """[..., U] -> each unit's probability of being in the top `keep` under a random tie-break."""
    threshold = target.topk(keep, -1).values[..., -1:]
    above = target > threshold
    tied = target == threshold
    free = keep - above.sum(-1, keepdim=True)
    share = free.double() / tied.sum(-1, keepdim=True).double()
    return above.double() + tied.double() * share


def top_k_recall(predicted: torch.Tensor, target: torch.Tensor, keep: int) -> torch.Tensor:
    """[N, L, U] -> [L]: expected fraction of the true top-`keep` units found in the predicted
    top-`keep` (ties in the target resolved as in the module docstring)."""
    if keep >= predicted.shape[-1]:
        return torch.ones(predicted.shape[1], dtype=torch.float64)
    truth = true_top_k_weights(target, keep)
    found = truth.gather(-1, predicted.topk(keep, -1).indices).sum(-1)
    return _row_mean(found / keep, ~constant(target))


def quality_report(predicted_heads, target_heads, predicted_neurons, target_neurons, keep_heads: int,
                   keep_neurons: int) -> dict:
    """Spearman and top-k recall of heads and neurons; a kind predicted as None is left out."""
    report = {}
    for kind, predicted, target, keep in (("heads", predicted_heads, target_heads, keep_heads),
                                          ("neurons", predicted_neurons, target_neurons, keep_neurons)):
        if predicted is None:
            continue
        rho = spearman(predicted, target)
        recall = top_k_recall(predicted, target, keep)
        report[f"{kind}_spearman_mean"] = float(np.nanmean(rho.numpy()))
        report[f"{kind}_recall_mean"] = float(np.nanmean(recall.numpy()))
        report[f"{kind}_spearman_layer"] = [round(float(v), 4) for v in rho]
        report[f"{kind}_recall_layer"] = [round(float(v), 4) for v in recall]
        report[f"{kind}_constant_rows"] = int(constant(target).sum())
    return report
