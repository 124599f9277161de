"""Where each predictor kind's scores come from inside a forward pass: one class per kind,
registered in `SOURCES` and driven by `predictors.runtime.ContextualMasks`.

A source gives scores in one of three ways, and the runtime ranks them (`MaskPredictor`):
- `start(inputs)`: at the start of a forward, masks for every layer at once (static; random
  and oracle under per_sequence);
- `layer_scores(layer, hidden)`: at decoder layer `layer`'s input hidden [B, T', D] (T' = T
  per token, 1 per sequence at the chosen token), that layer's scores [B, T', H], [B, T', I];
- `hooks()`: its own module hooks (ShadowLLM reads layer 0's head context; the per-token
  l2_norm oracle reads each layer's own two tensors).
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch

from shadow_sweep.config import ConfigError, MaskUpdate, PredictorName
from shadow_sweep.traces.collect import score_inputs

if TYPE_CHECKING:
    from shadow_sweep.predictors.runtime import ContextualMasks

_MASK32 = 0xFFFFFFFF
_NEURON_OFFSET = 1 << 20


@dataclass
class ForwardInputs:
    ids: torch.Tensor  # [B, T]
    attention_mask: Optional[torch.Tensor]  # [B, T] or None
    positions: torch.Tensor  # [B, T] position of each token in its sequence
    chosen: torch.Tensor  # [B] the position whose token chooses per_sequence masks

    def at_chosen(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, ...] at each row's chosen position -> [B, 1, ...]."""
        return x[torch.arange(x.shape[0], device=x.device), self.chosen.to(x.device)][:, None]


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (int64 tensors holding values < 2^32; products stay < 2^63)."""
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    return x ^ (x >> 16)


def hashed_uniform(seed: int, ids: torch.Tensor, positions: torch.Tensor, layer: int, units: int,
                   offset: int = 0) -> torch.Tensor:
    """Uniform [0, 1) scores [B, T, U], a function of (seed, token id, position, layer, unit)
    only: a row scores the same alone or in any batch, and differently at every token."""
    key = _mix(torch.full_like(ids, (seed * 0x9E3779B1 + layer) & _MASK32))
    key = _mix(key ^ (ids & _MASK32))
    key = _mix(key ^ (positions & _MASK32))
    unit = torch.arange(offset, offset + units, device=ids.device)
    return _mix(key[..., None] ^ unit).to(torch.float64).div(2.0**32).float()


class MaskSource:
    """No masks (dense); the base of every source."""

    def __init__(self, runtime: "ContextualMasks"):
        self.runtime = runtime
        self.predictor = runtime.predictor
        self.shape = runtime.loaded.shape

    def check(self, update: MaskUpdate) -> None:
        """Raise ConfigError for an update policy this kind cannot serve."""

    def layered(self, update: MaskUpdate) -> range:
        """Layers whose masks come from `layer_scores` at their input."""
        return range(0)

    def hooks(self, update: MaskUpdate) -> list:
        return []

    def start(self, inputs: ForwardInputs) -> None:
        pass

    def layer_scores(self, layer: int, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class StaticSource(MaskSource):
    def start(self, inputs: ForwardInputs) -> None:
        self.runtime.masks.set(*self.predictor.static)


class RandomSource(MaskSource):
    """Scores hashed from (seed, token id, position): per_sequence at the chosen token."""

    def layered(self, update: MaskUpdate) -> range:
        return range(self.shape.num_layers) if update == MaskUpdate.per_token else range(0)

    def scores(self, ids: torch.Tensor, positions: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        seed = self.runtime.seed
        heads = hashed_uniform(seed, ids, positions, layer, self.shape.num_heads)
        return heads, hashed_uniform(seed, ids, positions, layer, self.shape.num_neurons, _NEURON_OFFSET)

    def start(self, inputs: ForwardInputs) -> None:
        if self.runtime.update == MaskUpdate.per_token:
            self.inputs = inputs
            return
        ids = inputs.at_chosen(inputs.ids)
        positions = inputs.at_chosen(inputs.positions)
        per_layer = [self.scores(ids, positions, layer) for layer in range(self.shape.num_layers)]
        heads = torch.cat([h for h, _ in per_layer], 1)
        neurons = torch.cat([n for _, n in per_layer], 1)
        self.runtime.masks.set(*self.predictor.masks(heads, neurons))

    def layer_scores(self, layer: int, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scores(self.inputs.ids, self.inputs.positions, layer)


class ShadowLLMSource(MaskSource):
    """One network call on layer 0's head context; per token, every later layer's scores are
    one output slice of its trunk, taken at that layer (never all layers at once)."""

    def layered(self, update: MaskUpdate) -> range:
        return range(1, self.shape.num_layers) if update == MaskUpdate.per_token else range(0)

    def hooks(self, update: MaskUpdate) -> list:
        o_proj = self.runtime.loaded.adapter.head_context_modules(self.runtime.loaded.model)[0]
        return [o_proj.register_forward_pre_hook(self._on_layer_zero_context)]

    def _on_layer_zero_context(self, _module, args) -> None:
        runtime = self.runtime
        if runtime.holding:
            return
        context = args[0]  # [B, T, H*d]
        runtime.network_calls += 1
        if runtime.update == MaskUpdate.per_sequence:
            chosen = runtime.inputs.at_chosen(context)[:, 0]
            runtime.masks.set(*self.predictor.all_layers(chosen))
            return
        self.trunk = self.predictor.shadow_trunk(context.flatten(0, 1))  # [B*T, 1, r]
        self.rows = context.shape[:2]

    def layer_scores(self, layer: int, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        heads, neurons = self.predictor.shadow_layer_scores(self.trunk, layer)
        return heads.unflatten(0, self.rows), neurons.unflatten(0, self.rows)


class DejaVuSource(MaskSource):
    """One network per layer l >= 1 on that layer's input hidden state."""

    def layered(self, update: MaskUpdate) -> range:
        return range(1, self.shape.num_layers)

    def layer_scores(self, layer: int, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.runtime.network_calls += 1
        heads, neurons = self.predictor.dejavu_layer_scores(layer, hidden.flatten(0, 1))
        return heads.unflatten(0, hidden.shape[:2]), neurons.unflatten(0, hidden.shape[:2])


class OracleSource(MaskSource):
    """The criterion on the input itself. per_sequence: an extra forward and backward over the
    whole input (loss on all its tokens) before the masked forward. per_token: l2_norm only,
    read at each layer's own tensors (head ||a_t,h||, neuron |a_t,i|), so it stays causal;
    gradient criteria see the future by construction."""

    def check(self, update: MaskUpdate) -> None:
        if update == MaskUpdate.per_token and self.runtime.criterion_name != "l2_norm":
            raise ConfigError(f"predictor=oracle with sparsity.update=per_token supports criterion=l2_norm "
                              f"(a per-token mask read from the token's own activations), not "
                              f"{self.runtime.criterion_name!r}")

    def hooks(self, update: MaskUpdate) -> list:
        if update != MaskUpdate.per_token:
            return []
        loaded = self.runtime.loaded
        handles = []
        for layer, module in enumerate(loaded.adapter.head_context_modules(loaded.model)):
            handles.append(module.register_forward_pre_hook(self._heads_hook(layer), prepend=True))
        for layer, module in enumerate(loaded.adapter.neuron_activation_modules(loaded.model)):
            handles.append(module.register_forward_pre_hook(self._neurons_hook(layer), prepend=True))
        return handles

    def _budget(self, kind: int):
        """Per-layer keep counts of heads (0) or neurons (1) under global_budgets, else None."""
        budgets = self.predictor.budgets
        return None if budgets is None else budgets[kind]

    def _heads_hook(self, layer: int):
        def hook(_module, args) -> None:
            x = args[0]
            scores = x.unflatten(-1, (self.shape.num_heads, self.shape.head_dim)).float().norm(dim=-1)
            policy = self.runtime.policy
            mask = policy.heads.layer_masks(layer, policy.group_heads(scores), self._budget(0))
            self.runtime.masks.heads[layer] = policy.expand_heads(mask)

        return hook

    def _neurons_hook(self, layer: int):
        def hook(_module, args) -> None:
            x = args[0]
            batch = self.runtime.inputs.ids.shape[0]
            scores = (x.view(batch, -1, x.shape[-1]) if x.dim() == 2 else x).float().abs()
            plan = self.runtime.policy.neurons
            self.runtime.masks.neurons[layer] = plan.layer_masks(layer, scores, self._budget(1))

        return hook

    def start(self, inputs: ForwardInputs) -> None:
        if self.runtime.update == MaskUpdate.per_token:
            return
        ids, attention_mask = inputs.ids, inputs.attention_mask
        valid = attention_mask.bool() if attention_mask is not None else torch.ones_like(ids, dtype=torch.bool)
        criterion, cfg = self.runtime.oracle
        with self.runtime.paused():
            scores = score_inputs(self.runtime.loaded, criterion, cfg, ids, valid)
        self.runtime.masks.set(*self.predictor.masks(scores.head_scores, scores.neuron_scores))


SOURCES: dict[PredictorName, type[MaskSource]] = {
    PredictorName.dense: MaskSource,
    PredictorName.static: StaticSource,
    PredictorName.random: RandomSource,
    PredictorName.shadowllm: ShadowLLMSource,
    PredictorName.dejavu: DejaVuSource,
    PredictorName.oracle: OracleSource,
}
