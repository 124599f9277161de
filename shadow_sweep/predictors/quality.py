"""Predictor quality on held-out traces: Spearman rank correlation and top-k recall.

Both are computed per example within one layer (the unit ranking a per-layer decision uses)
and averaged over examples; `layer_*` keeps one value per layer, `*_mean` their mean.
"""

import torch


def ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 0..U-1 along the last dimension (ties in arbitrary order)."""
    return x.argsort(-1).argsort(-1).to(torch.float64)


def spearman(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[N, L, U] -> [L]: mean over examples of the Spearman correlation within each layer."""
    a, b = ranks(predicted), ranks(target)
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    rho = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)
    return rho.mean(0)


def top_k_recall(predicted: torch.Tensor, target: torch.Tensor, keep: int) -> torch.Tensor:
    """[N, L, U] -> [L]: the fraction of the true top-`keep` units found in the predicted top-`keep`."""
    if keep >= predicted.shape[-1]:
        return torch.ones(predicted.shape[1], dtype=torch.float64)
    true_top = torch.zeros_like(target, dtype=torch.bool).scatter_(-1, target.topk(keep, -1).indices, True)
    found = true_top.gather(-1, predicted.topk(keep, -1).indices).sum(-1)
    return (found.double() / keep).mean(0)


def quality_report(predicted_heads, target_heads, predicted_neurons, target_neurons, keep_heads: int,
                   keep_neurons: int) -> dict:
    report = {}
    for kind, predicted, target, keep in (("heads", predicted_heads, target_heads, keep_heads),
                                          ("neurons", predicted_neurons, target_neurons, keep_neurons)):
        rho = spearman(predicted, target)
        recall = top_k_recall(predicted, target, keep)
        report[f"{kind}_spearman_mean"] = float(rho.mean())
        report[f"{kind}_recall_mean"] = float(recall.mean())
        report[f"{kind}_spearman_layer"] = [round(float(v), 4) for v in rho]
        report[f"{kind}_recall_layer"] = [round(float(v), 4) for v in recall]
    return report
