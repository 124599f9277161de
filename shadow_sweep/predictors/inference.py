"""A fitted predictor turned into keep masks, batched: the one place both measurement paths
(masked accuracy path, sparse decode path) get their masks from."""

import torch

from shadow_sweep.config import PredictorName
from shadow_sweep.predictors.fit import FittedPredictor, split_outputs
from shadow_sweep.predictors.targets import normalise_inputs
from shadow_sweep.sparsity.policy import SparsityPolicy


class MaskPredictor:
    def __init__(self, fitted: FittedPredictor, policy: SparsityPolicy, device: torch.device = torch.device("cpu")):
        """Runs the network on `device` (the model's): masks come out where the activations are."""
        if fitted.net is not None:
            fitted.net.to(device)
        self.fitted, self.policy, self.shape = fitted, policy, policy.shape
        self.budgets = None  # DejaVu decides per layer; under global ranking with these per-layer counts
        if fitted.kind == PredictorName.dejavu and policy.cfg.ranking.value == "global":
            self.budgets = policy.budgets_from(fitted.mean_head_scores, fitted.mean_neuron_scores)
        self.static = None
        if fitted.kind == PredictorName.static:
            self.static = policy.masks(fitted.mean_head_scores[None].to(device), fitted.mean_neuron_scores[None].to(device))

    def all_layers(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ShadowLLM: layer-0 head context [B, H*d] (one token per row) -> masks [B, L, H], [B, L, I]
        (layer 0 kept: it is not predicted)."""
        out = self.fitted.net(normalise_inputs(context.float())[:, None])
        heads, neurons = split_outputs(PredictorName.shadowllm, out, self.shape)
        pad = lambda t: torch.cat([t.new_zeros(t.shape[0], 1, t.shape[2]), t], 1)  # noqa: E731
        return self.policy.masks(pad(heads), pad(neurons))

    def one_layer(self, layer: int, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DejaVu: layer `layer`'s input [B, D] -> that layer's masks [B, H], [B, I]."""
        out = self.fitted.net(normalise_inputs(hidden.float())[:, None], group=slice(layer - 1, layer))[:, 0]
        heads = self.shape.num_heads
        return self.policy.layer_masks(layer, out[:, :heads], out[:, heads:], self.budgets)
