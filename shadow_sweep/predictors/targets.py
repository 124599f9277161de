"""Normalisation of predictor inputs and targets (ShadowLLM's choices).

inputs:   per example min-max over the features to [0, 1].
targets:  per_layer: per example, layer and kind (heads / neurons) min-max to [0, 1];
          global:    per example and kind, over all predicted layers at once.
Per-layer targets make scores of different layers comparable, which global ranking needs.
"""

import torch

EPS = 1e-8


def min_max(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    low = x.amin(dim=dims, keepdim=True)
    high = x.amax(dim=dims, keepdim=True)
    return (x - low) / (high - low + EPS)


def normalise_inputs(x: torch.Tensor) -> torch.Tensor:
    """[..., F] -> per-row min-max over F."""
    return min_max(x, (-1,))


def normalise_targets(scores: torch.Tensor, target_norm: str) -> torch.Tensor:
    """scores [N, L, U] -> [0, 1] per (example, layer) or per example."""
    return min_max(scores, (-1,) if target_norm == "per_layer" else (-2, -1))
