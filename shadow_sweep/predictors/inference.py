"""Scores chosen ahead turned into keep masks, batched: the one place both measurement paths
(masked accuracy path, sparse decode path) get an ahead selector's masks from.

Rows are tokens: [N, ...] is a batch of examples (per_sequence, one token each) or of tokens
(per_token). Ranking rule (`ranking_rule`): `per_layer` ranks each layer's units alone;
`global` ranks all pooled layers together, exactly, when one decision sees every layer's
scores at once (one network after layer 0, fixed and hashed scores, the oracle, under
per_sequence); decisions taken one layer at a time (a network per layer always; every selector
under per_token, so that a token's masks never need a whole model's scores and the decode path
gets static per-layer counts) keep the per-layer budgets that the global ranking gives to the
mean calibration scores (`global_budgets`).
"""

from typing import Optional

import torch

from shadow_sweep.config import MaskUpdate
from shadow_sweep.predictors.fit import FittedPredictor
from shadow_sweep.predictors.targets import normalise_inputs
from shadow_sweep.sparsity.policy import SparsityPolicy
from shadow_sweep.sparsity.topk import top_k_indices


def ranking_rule(policy: SparsityPolicy, layerwise: bool, update: MaskUpdate) -> str:
    """per_layer, global (exact) or global_budgets; see the module docstring."""
    if policy.cfg.ranking.value == "per_layer":
        return "per_layer"
    one_layer_at_a_time = layerwise or MaskUpdate(update) == MaskUpdate.per_token
    return "global_budgets" if one_layer_at_a_time else "global"


class MaskPredictor:
    def __init__(self, fitted: Optional[FittedPredictor], policy: SparsityPolicy,
                 device: torch.device = torch.device("cpu"), update: MaskUpdate = MaskUpdate.per_token,
                 fixed: bool = False):
        """Runs the network on `device` (the model's): masks come out where the activations are.
        `fitted`: its network and mean calibration scores (None: no network, and no global
        budgets needed); `fixed`: one mask for every input, from the mean scores (`static`)."""
        if fitted is not None and fitted.net is not None:
            fitted.net.to(device)
        self.fitted = fitted
        self.layout = fitted.layout if fitted is not None else None
        self.policy = policy
        self.shape = policy.shape
        self.update = MaskUpdate(update)
        self.rule = ranking_rule(policy, self.layout is not None and self.layout.layerwise, self.update)
        self.budgets: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        if self.rule == "global_budgets":
            if fitted is None:
                raise ValueError("global ranking one layer at a time needs the mean calibration scores of a fit")
            self.budgets = policy.budgets_from(fitted.mean_head_scores, fitted.mean_neuron_scores)
        self.static = None
        if fixed:
            self.static = policy.masks(fitted.mean_head_scores[None].to(device),
                                       fitted.mean_neuron_scores[None].to(device))

    def masks(self, heads: Optional[torch.Tensor], neurons: Optional[torch.Tensor]):
        """Every layer's scores [N, L, H], [N, L, I] -> masks, by the ranking rule."""
        return self.policy.masks(heads, neurons, self.budgets)

    def layer_masks(self, layer: int, heads: Optional[torch.Tensor], neurons: Optional[torch.Tensor]):
        """One layer's scores [..., H], [..., I] -> masks (per-layer counts or budgets)."""
        return self.policy.layer_masks(layer, heads, neurons, self.budgets)

    def trunk(self, context: torch.Tensor) -> torch.Tensor:
        """One network: layer-0 head context [N, H*d] -> trunk features [N, 1, r]: the one network
        call; every layer's scores are one output slice of it (`layer_scores_from_trunk`)."""
        return self.fitted.net.trunk(normalise_inputs(context.float())[:, None])

    def layer_scores_from_trunk(self, trunk: torch.Tensor, layer: int):
        """One network: layer `layer` (>= 1)'s predicted scores [N, H], [N, I] (None where the
        network predicts no such units) from trunk features [N, 1, r]."""
        head_cols, neuron_cols = self.layout.layer_columns(layer, self.shape)
        net = self.fitted.net
        heads = net.output(trunk, columns=head_cols)[:, 0] if self.layout.heads else None
        neurons = net.output(trunk, columns=neuron_cols)[:, 0] if self.layout.neurons else None
        return heads, neurons

    def _network(self, x: torch.Tensor, group: slice, kernels) -> torch.Tensor:
        """The network on normalised inputs x [N, in] -> [N, g, out]; with decode `kernels`
        (one token: N = 1, one group) each layer is their vector-matrix product."""
        x = normalise_inputs(x.float())
        if kernels is None:
            return self.fitted.net(x[:, None], group=group)
        return self.fitted.net.one_row(x[0], group.start or 0, kernels.vector_matrix)[None, None]

    def all_layer_scores(self, context: torch.Tensor, kernels=None):
        """One network: layer-0 head context [N, H*d] -> scores [N, L, H], [N, L, I] (zeros for
        layer 0: it is not predicted; None for units it does not predict). `kernels`: see
        `_network`."""
        heads, neurons = self.layout.split(self._network(context, slice(None), kernels), self.shape)
        return _with_layer_zero(heads), _with_layer_zero(neurons)

    def all_layers(self, context: torch.Tensor):
        """One network: layer-0 head context [N, H*d] -> masks [N, L, H], [N, L, I] (layer 0 kept)."""
        return self.masks(*self.all_layer_scores(context))

    def all_layers_kept(self, context: torch.Tensor, kernels=None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """One network, one token: context [1, H*d] -> each layer's kept query heads and neurons
        (ascending indices, what `all_layers` keeps); `kernels` (decode.fused) run the network
        and the top-k (ties at the threshold may then go to other units than torch.topk's)."""
        heads, neurons = self.all_layer_scores(context, kernels)
        return self.policy.kept(heads[0], neurons[0], self.budgets, _top_k(kernels))

    def layer_network_scores(self, layer: int, x: torch.Tensor, kernels=None):
        """A network per layer: layer `layer`'s input x [N, D] -> its scores [N, H], [N, I]
        (None where it predicts no such units)."""
        return self.layout.split(self._network(x, slice(layer - 1, layer), kernels)[:, 0], self.shape)

    def one_layer(self, layer: int, x: torch.Tensor):
        """A network per layer: layer `layer`'s input [N, D] -> its masks [N, H], [N, I]."""
        return self.layer_masks(layer, *self.layer_network_scores(layer, x))

    def one_layer_kept(self, layer: int, x: torch.Tensor, kernels=None) -> tuple[torch.Tensor, torch.Tensor]:
        """A network per layer, one token: layer `layer`'s input [1, D] -> its kept query heads
        and neurons (`kernels`: as in `all_layers_kept`)."""
        heads, neurons = self.layer_network_scores(layer, x, kernels)
        first = lambda scores: None if scores is None else scores[0]  # noqa: E731
        return self.policy.layer_kept(layer, first(heads), first(neurons), self.budgets, _top_k(kernels))


def _top_k(kernels):
    """The top-k selection of decode `kernels`, or the masks' own (sparsity.topk)."""
    return top_k_indices if kernels is None else kernels.top_k_indices


def _with_layer_zero(scores: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """[N, L-1, U] predicted layers -> [N, L, U] with zeros for layer 0 (kept dense)."""
    if scores is None:
        return None
    return torch.cat([scores.new_zeros(scores.shape[0], 1, scores.shape[2]), scores], 1)
