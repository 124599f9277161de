"""A fitted predictor turned into scores and keep masks, batched: the one place both measurement
paths (masked accuracy path, sparse decode path) get their masks from.

Rows are tokens: [N, ...] is a batch of examples (per_sequence, one token each) or of tokens
(per_token). Ranking rule (`ranking_rule`): `per_layer` ranks each layer's units alone;
`global` ranks all pooled layers together, exactly, when one decision sees every layer's
scores at once (ShadowLLM, static, random and oracle under per_sequence); decisions taken one
layer at a time (DejaVu always; every predictor under per_token, so that a token's masks never
need a whole model's scores and the decode path gets static per-layer counts) keep the
per-layer budgets that the global ranking gives to the mean calibration scores
(`global_budgets`).
"""

from typing import Optional

import torch

from shadow_sweep.config import MaskUpdate, PredictorName
from shadow_sweep.predictors.fit import FittedPredictor
from shadow_sweep.predictors.layouts import NETWORKS
from shadow_sweep.predictors.targets import normalise_inputs
from shadow_sweep.sparsity.policy import SparsityPolicy
from shadow_sweep.sparsity.topk import top_k_indices


def ranking_rule(policy: SparsityPolicy, kind: PredictorName, update: MaskUpdate) -> str:
    """per_layer, global (exact) or global_budgets; see the module docstring."""
    if policy.cfg.ranking.value == "per_layer":
        return "per_layer"
    layerwise = kind == PredictorName.dejavu or MaskUpdate(update) == MaskUpdate.per_token
    return "global_budgets" if layerwise else "global"


class MaskPredictor:
    def __init__(self, fitted: FittedPredictor, policy: SparsityPolicy,
                 device: torch.device = torch.device("cpu"), update: MaskUpdate = MaskUpdate.per_token):
        """Runs the network on `device` (the model's): masks come out where the activations are."""
        if fitted.net is not None:
            fitted.net.to(device)
        self.fitted = fitted
        self.policy = policy
        self.shape = policy.shape
        self.update = MaskUpdate(update)
        self.rule = ranking_rule(policy, fitted.kind, self.update)
        self.budgets: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        if self.rule == "global_budgets":
            self.budgets = policy.budgets_from(fitted.mean_head_scores, fitted.mean_neuron_scores)
        self.static = None
        if fitted.kind == PredictorName.static:
            self.static = policy.masks(fitted.mean_head_scores[None].to(device),
                                       fitted.mean_neuron_scores[None].to(device))

    def masks(self, heads: torch.Tensor, neurons: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every layer's scores [N, L, H], [N, L, I] -> masks, by the ranking rule."""
        return self.policy.masks(heads, neurons, self.budgets)

    def layer_masks(self, layer: int, heads: torch.Tensor, neurons: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One layer's scores [..., H], [..., I] -> masks (per-layer counts or budgets)."""
        return self.policy.layer_masks(layer, heads, neurons, self.budgets)

    def shadow_trunk(self, context: torch.Tensor) -> torch.Tensor:
        """ShadowLLM: layer-0 head context [N, H*d] -> trunk features [N, 1, r]: the one network
        call; every layer's scores are one output slice of it (`shadow_layer_scores`)."""
        return self.fitted.net.trunk(normalise_inputs(context.float())[:, None])

    def shadow_layer_scores(self, trunk: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `layer` (>= 1)'s predicted scores [N, H], [N, I] from trunk features [N, 1, r]."""
        heads = self.shape.num_heads
        neurons = self.shape.num_neurons
        predicted = self.shape.num_layers - 1
        head_cols = slice((layer - 1) * heads, layer * heads)
        first_neuron = predicted * heads + (layer - 1) * neurons
        net = self.fitted.net
        return (net.output(trunk, columns=head_cols)[:, 0],
                net.output(trunk, columns=slice(first_neuron, first_neuron + neurons))[:, 0])

    def _network(self, x: torch.Tensor, group: slice, kernels) -> torch.Tensor:
        """The network on normalised inputs x [N, in] -> [N, g, out]; with decode `kernels`
        (one token: N = 1, one group) each layer is their vector-matrix product."""
        x = normalise_inputs(x.float())
        if kernels is None:
            return self.fitted.net(x[:, None], group=group)
        return self.fitted.net.one_row(x[0], group.start or 0, kernels.vector_matrix)[None, None]

    def all_layer_scores(self, context: torch.Tensor, kernels=None) -> tuple[torch.Tensor, torch.Tensor]:
        """ShadowLLM: layer-0 head context [N, H*d] -> scores [N, L, H], [N, L, I] (zeros for
        layer 0: it is not predicted). `kernels`: see `_network`."""
        out = self._network(context, slice(None), kernels)
        heads, neurons = NETWORKS[PredictorName.shadowllm].split(out, self.shape)
        return _with_layer_zero(heads), _with_layer_zero(neurons)

    def all_layers(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ShadowLLM: layer-0 head context [N, H*d] -> masks [N, L, H], [N, L, I] (layer 0 kept)."""
        return self.masks(*self.all_layer_scores(context))

    def all_layers_kept(self, context: torch.Tensor, kernels=None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """ShadowLLM, one token: context [1, H*d] -> each layer's kept query heads and neurons
        (ascending indices, what `all_layers` keeps); `kernels` (decode.fused) run the network
        and the top-k (ties at the threshold may then go to other units than torch.topk's)."""
        heads, neurons = self.all_layer_scores(context, kernels)
        return self.policy.kept(heads[0], neurons[0], self.budgets, _top_k(kernels))

    def dejavu_layer_scores(self, layer: int, hidden: torch.Tensor, kernels=None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """DejaVu: layer `layer`'s input [N, D] -> that layer's scores [N, H], [N, I]."""
        out = self._network(hidden, slice(layer - 1, layer), kernels)[:, 0]
        heads = self.shape.num_heads
        return out[:, :heads], out[:, heads:]

    def one_layer(self, layer: int, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DejaVu: layer `layer`'s input [N, D] -> that layer's masks [N, H], [N, I]."""
        return self.layer_masks(layer, *self.dejavu_layer_scores(layer, hidden))

    def one_layer_kept(self, layer: int, hidden: torch.Tensor, kernels=None) -> tuple[torch.Tensor, torch.Tensor]:
        """DejaVu, one token: layer `layer`'s input [1, D] -> its kept query heads and neurons
        (`kernels`: as in `all_layers_kept`)."""
        heads, neurons = self.dejavu_layer_scores(layer, hidden, kernels)
        return self.policy.layer_kept(layer, heads[0], neurons[0], self.budgets, _top_k(kernels))


def _top_k(kernels):
    """The top-k selection of decode `kernels`, or the masks' own (sparsity.topk)."""
    return top_k_indices if kernels is None else kernels.top_k_indices


def _with_layer_zero(scores: torch.Tensor) -> torch.Tensor:
    """[N, L-1, U] predicted layers -> [N, L, U] with zeros for layer 0 (kept dense)."""
    return torch.cat([scores.new_zeros(scores.shape[0], 1, scores.shape[2]), scores], 1)
