"""Sparsity policy: per-unit scores -> exact keep masks.

A ranking pool is a set of units competing for the same budget:
- `per_layer`: each layer's heads (or K/V groups), and each layer's neurons;
- `global`: all heads of the pooled layers together, all their neurons together, optionally
  with a minimum every layer keeps (reserved first, the rest of the budget filled globally).
Level s keeps exactly round((1 - s) * N) units of a pool of N (`keep_count`); s = 0 keeps all.
With `keep_first_layer_dense` layer 0 is outside the pools and always kept, so the nominal
level is exact on the layers that are pruned. Under `kv_group` granularity a K/V group's
score is the sum of its query heads' scores and the group is kept or skipped whole (HF's
layout: query head h reads K/V head h // (H / KV)).
Scores compared across layers (global) must be comparable: predictors are trained on
per-layer-normalised targets for this reason (see predictors.targets).
"""

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from shadow_sweep.config import ConfigError, HeadGranularity, SparsityConfig
from shadow_sweep.models.adapters import ModelShape
from shadow_sweep.sparsity.topk import expand_indices, keep_count, top_k_indices, top_k_mask

TopK = Callable[[torch.Tensor, int], torch.Tensor]
"""A top-k selection: scores [..., U], k -> the k highest positions [..., k], ascending."""


@dataclass(frozen=True)
class PoolPlan:
    """How one kind of unit (heads or neurons) is masked."""

    level: float
    units_per_layer: int  # heads, K/V groups, or neurons
    first_pooled_layer: int  # 0, or 1 when layer 0 stays dense
    num_layers: int
    global_ranking: bool
    min_per_layer: int

    @property
    def pooled_layers(self) -> int:
        return self.num_layers - self.first_pooled_layer

    def keep_per_layer(self) -> int:
        return keep_count(self.level, self.units_per_layer)

    def keep_global(self) -> int:
        return keep_count(self.level, self.pooled_layers * self.units_per_layer)

    def check(self, kind: str, field: str) -> None:
        """Errors for pools that would keep nothing or cannot honour the minimum."""
        if self.level == 0.0:
            return
        if self.global_ranking:
            keep = self.keep_global()
            if keep == 0:
                raise ConfigError(f"{field}={self.level} keeps 0 of the {self.pooled_layers * self.units_per_layer} "
                                  f"{kind} of the global pool; lower the level")
            if self.min_per_layer * self.pooled_layers > keep or self.min_per_layer > self.units_per_layer:
                raise ConfigError(f"sparsity.min_{kind}_per_layer={self.min_per_layer} over {self.pooled_layers} "
                                  f"layers exceeds the {keep} {kind} kept at {field}={self.level}")
        elif self.keep_per_layer() == 0:
            raise ConfigError(f"{field}={self.level} keeps 0 of the {self.units_per_layer} {kind} of a layer "
                              "(per_layer ranking); lower the level or use global ranking with a per-layer minimum")

    def masks(self, scores: torch.Tensor, budgets: Optional[torch.Tensor] = None) -> torch.Tensor:
        """scores [B, L, U] -> masks [B, L, U] (float 0/1). `budgets` [L] overrides the
        per-layer keep counts (per-layer decisions that realise a global allocation)."""
        mask = torch.ones_like(scores, dtype=torch.float32)
        if self.level == 0.0:
            return mask
        pooled = scores[:, self.first_pooled_layer:].float()
        if budgets is not None:
            kept = torch.stack([top_k_mask(pooled[:, i], int(budgets[self.first_pooled_layer + i]))
                                for i in range(self.pooled_layers)], 1)
        elif self.global_ranking:
            if self.min_per_layer:
                reserved = top_k_mask(pooled, self.min_per_layer).bool()
                pooled = torch.where(reserved, torch.inf, pooled)
            kept = top_k_mask(pooled.flatten(1), self.keep_global()).view_as(pooled)
        else:
            kept = top_k_mask(pooled, self.keep_per_layer())
        mask[:, self.first_pooled_layer:] = kept
        return mask

    def layer_masks(self, layer: int, scores: torch.Tensor, budgets: Optional[torch.Tensor]) -> torch.Tensor:
        """One layer's masks [B, U] from its scores [B, U] (per-layer decisions inside a forward)."""
        if self.level == 0.0 or layer < self.first_pooled_layer:
            return torch.ones_like(scores, dtype=torch.float32)
        keep = int(budgets[layer]) if budgets is not None else self.keep_per_layer()
        return top_k_mask(scores.float(), keep)

    def layer_keep(self, layer: int, budgets: Optional[torch.Tensor]) -> Optional[int]:
        """How many units one layer keeps per token in per-layer decisions (None: every one)."""
        if self.level == 0.0 or layer < self.first_pooled_layer:
            return None
        return int(budgets[layer]) if budgets is not None else self.keep_per_layer()

    def layer_kept(self, layer: int, scores: torch.Tensor, budgets: Optional[torch.Tensor],
                   select: TopK = top_k_indices) -> torch.Tensor:
        """One token's units that `layer_masks` keeps, ascending: scores [U] -> indices [k]
        (the same top-k, without building and reading back a mask; `select`: its kernel)."""
        keep = self.layer_keep(layer, budgets)
        if keep is None:
            return torch.arange(scores.shape[-1], device=scores.device)
        return select(scores, keep)

    def kept(self, scores: torch.Tensor, budgets: Optional[torch.Tensor], select: TopK = top_k_indices
             ) -> list[torch.Tensor]:
        """One token's units that `masks` keeps in each layer, ascending: scores [L, U] -> L
        index tensors (one top-k call for per-layer counts)."""
        if self.global_ranking and budgets is None:
            return [row.nonzero().squeeze(1) for row in self.masks(scores[None])[0].bool()]
        if self.level == 0.0 or budgets is not None:
            return [self.layer_kept(layer, row, budgets, select) for layer, row in enumerate(scores)]
        first = self.first_pooled_layer
        pooled = select(scores[first:], self.keep_per_layer())
        return [self.layer_kept(layer, scores[layer], None) for layer in range(first)] + list(pooled.unbind(0))

    def budgets_from(self, mean_scores: torch.Tensor) -> torch.Tensor:
        """Per-layer keep counts [L] that a global ranking gives to typical scores [L, U]."""
        return self.masks(mean_scores[None])[0].sum(-1).long()


class SparsityPolicy:
    """Masks for heads and neurons of one model at one operating point."""

    def __init__(self, cfg: SparsityConfig, shape: ModelShape):
        self.cfg, self.shape = cfg, shape
        head_level = cfg.level if cfg.head_level is None else cfg.head_level
        neuron_level = cfg.level if cfg.neuron_level is None else cfg.neuron_level
        for field, level in (("sparsity.head_level", head_level), ("sparsity.neuron_level", neuron_level)):
            if not 0.0 <= level < 1.0:
                raise ConfigError(f"{field}={level} is not allowed: expected a number in [0, 1)")
        self.group = shape.queries_per_kv if cfg.head_granularity == HeadGranularity.kv_group else 1
        first = 1 if cfg.keep_first_layer_dense else 0
        is_global = cfg.ranking.value == "global"
        self.heads = PoolPlan(head_level, shape.num_heads // self.group, first, shape.num_layers, is_global,
                              cfg.min_heads_per_layer)
        self.neurons = PoolPlan(neuron_level, shape.num_neurons, first, shape.num_layers, is_global,
                                cfg.min_neurons_per_layer)
        self.heads.check("heads", "sparsity.head_level")
        self.neurons.check("neurons", "sparsity.neuron_level")

    def group_heads(self, head_scores: torch.Tensor) -> torch.Tensor:
        """[..., H] -> [..., H / group]: a K/V group's score is the sum of its query heads'."""
        return head_scores.unflatten(-1, (-1, self.group)).sum(-1) if self.group > 1 else head_scores

    def expand_heads(self, mask: torch.Tensor) -> torch.Tensor:
        return mask.repeat_interleave(self.group, dim=-1) if self.group > 1 else mask

    def masks(self, head_scores: Optional[torch.Tensor], neuron_scores: Optional[torch.Tensor],
              budgets: Optional[tuple[torch.Tensor, torch.Tensor]] = None
              ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """[B, L, H], [B, L, I] scores -> masks of the same shapes (None scores: None)."""
        head_budget, neuron_budget = budgets if budgets is not None else (None, None)
        heads = neurons = None
        if head_scores is not None:
            heads = self.expand_heads(self.heads.masks(self.group_heads(head_scores), head_budget))
        if neuron_scores is not None:
            neurons = self.neurons.masks(neuron_scores, neuron_budget)
        return heads, neurons

    def layer_masks(self, layer: int, head_scores: Optional[torch.Tensor], neuron_scores: Optional[torch.Tensor],
                    budgets: Optional[tuple[torch.Tensor, torch.Tensor]] = None
                    ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """One layer: [B, H], [B, I] scores -> masks (None scores: None)."""
        head_budget, neuron_budget = budgets if budgets is not None else (None, None)
        heads = neurons = None
        if head_scores is not None:
            heads = self.expand_heads(self.heads.layer_masks(layer, self.group_heads(head_scores), head_budget))
        if neuron_scores is not None:
            neurons = self.neurons.layer_masks(layer, neuron_scores, neuron_budget)
        return heads, neurons

    def expand_kept_heads(self, kept: torch.Tensor) -> torch.Tensor:
        """Kept K/V groups [k] -> their query heads [k * group], ascending (heads: unchanged)."""
        return expand_indices(kept, self.group) if self.group > 1 else kept

    def kept(self, head_scores: torch.Tensor, neuron_scores: torch.Tensor,
             budgets: Optional[tuple[torch.Tensor, torch.Tensor]] = None, select: TopK = top_k_indices
             ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """One token's scores [L, H], [L, I] -> each layer's kept query heads and neurons,
        ascending: what `masks` keeps, as indices (the decode path reads those rows).
        `select(scores [..., U], k)`: the top-k kernel (default: the masks' own)."""
        head_budget, neuron_budget = budgets if budgets is not None else (None, None)
        groups = self.heads.kept(self.group_heads(head_scores), head_budget, select)
        neurons = self.neurons.kept(neuron_scores, neuron_budget, select)
        return [self.expand_kept_heads(kept) for kept in groups], neurons

    def layer_kept(self, layer: int, head_scores: Optional[torch.Tensor], neuron_scores: Optional[torch.Tensor],
                   budgets: Optional[tuple[torch.Tensor, torch.Tensor]] = None, select: TopK = top_k_indices
                   ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """One token, one layer: scores [H], [I] -> kept query heads and neurons, ascending
        (None scores: None)."""
        head_budget, neuron_budget = budgets if budgets is not None else (None, None)
        heads = neurons = None
        if head_scores is not None:
            groups = self.heads.layer_kept(layer, self.group_heads(head_scores), head_budget, select)
            heads = self.expand_kept_heads(groups)
        if neuron_scores is not None:
            neurons = self.neurons.layer_kept(layer, neuron_scores, neuron_budget, select)
        return heads, neurons

    def budgets_from(self, head_scores: torch.Tensor, neuron_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-layer keep counts for per-layer decisions (DejaVu-style predictors, which see one
        layer at a time): with global ranking, the allocation the global pool gives to the mean
        calibration scores [L, H], [L, I]; with per-layer ranking, the per-layer counts."""
        return self.heads.budgets_from(self.group_heads(head_scores)), self.neurons.budgets_from(neuron_scores)
