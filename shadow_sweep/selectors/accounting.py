"""What a point's selection realised on the tokens an evaluation masked: kept fractions per slot
and the weight bytes one decode step would read (`selectors.traffic`), per token.

Per forward, every counted token (a real token that was not kept dense: not padding, not a
dense prompt, not an attention sink) starts with every slot of every layer fully kept; each
applied mask replaces its slot's count at its layer. At the end of the forward each counted
token gives its kept fraction per slot (over the layers the policy selects) and its bytes.
`summary()` gives their means over tokens and, since thresholds make the realised level vary
per token, their 5th and 95th percentiles.
"""

from typing import Optional

import numpy as np
import torch

from shadow_sweep.models.masks import Slot
from shadow_sweep.selectors.base import Point
from shadow_sweep.selectors.traffic import LayerCounts, LinearSizes, dense_counts, layer_bytes

SLOTS = tuple(Slot)
KV_GROUPS = len(SLOTS)  # the counts' last column: K/V groups the kept heads read


class SelectionAccount:
    def __init__(self, sizes: LinearSizes, num_layers: int, first_selected: int, attention: Point, mlp: Point,
                 dense_kv: bool, fixed: int, predictor: int):
        """`first_selected`: the first layer the policy selects (1 with layer 0 dense);
        `attention`, `mlp`: the blocks' points; `fixed`, `predictor`: bytes every step reads."""
        self.sizes = sizes
        self.layers = num_layers
        self.first = first_selected
        self.attention = attention
        self.mlp = mlp
        self.dense_kv = dense_kv
        self.fixed = fixed
        self.predictor = predictor
        full = dense_counts(sizes)
        self.widths = torch.tensor([full.attention_input, full.head_context, full.mlp_input, full.neuron_activation,
                                    full.kv_groups], dtype=torch.int32)
        self.counts: Optional[torch.Tensor] = None  # [B, T, L, 5] of the current forward
        self.counted: Optional[torch.Tensor] = None  # [B, T] bool
        self.repeats: Optional[torch.Tensor] = None  # [B] requests each row's tokens stand for
        self.fractions: list[torch.Tensor] = []  # per forward [n, 4]
        self.bytes: list[torch.Tensor] = []  # per forward [n]

    def dense_bytes(self) -> int:
        """The weight bytes of a dense step (no predictor)."""
        per_layer = layer_bytes(self.sizes, dense_counts(self.sizes), Point.ahead, Point.ahead, True)
        return self.fixed + self.layers * per_layer

    def start(self, counted: torch.Tensor, repeats: Optional[torch.Tensor] = None) -> None:
        """A forward begins; `counted` [B, T]: the tokens it masks, each counted repeats[b] times
        (default once: a shared context's tokens stand for each request that shares it)."""
        self.counted = counted.cpu()
        self.repeats = None if repeats is None else repeats.cpu()
        self.counts = self.widths.expand(*counted.shape, self.layers, len(self.widths)).clone()

    def record(self, slot: Slot, layer: int, applied: torch.Tensor) -> None:
        """A mask [B|1, T|1, U] (channels) applied at (slot, layer)."""
        if self.counts is None:
            return
        kept = applied.detach().ne(0)
        column = SLOTS.index(slot)
        self.counts[..., layer, column] = kept.sum(-1).to(torch.int32).cpu()
        if slot == Slot.head_context:
            groups = kept.unflatten(-1, (self.sizes.kv_heads, -1)).any(-1).sum(-1)
            self.counts[..., layer, KV_GROUPS] = groups.to(torch.int32).cpu()

    def finish(self) -> None:
        """The forward ended: keep its counted tokens' fractions and bytes."""
        if self.counts is None:
            return
        counts = self.counts[self.counted].long()  # [n, L, 5]
        if self.repeats is not None:
            per_token = self.repeats[:, None].expand(self.counted.shape)[self.counted]
            counts = counts.repeat_interleave(per_token, dim=0)
        self.counts = None
        if not len(counts):
            return
        selected = counts[:, self.first:, :KV_GROUPS].sum(1).double()
        width = self.widths[:KV_GROUPS].double() * max(self.layers - self.first, 1)
        self.fractions.append((selected / width).float())
        per_layer = LayerCounts(**{slot.value: counts[..., i] for i, slot in enumerate(SLOTS)},
                                kv_groups=counts[..., KV_GROUPS])
        weights = layer_bytes(self.sizes, per_layer, self.attention, self.mlp, self.dense_kv).sum(1)
        self.bytes.append(weights.double())

    def summary(self) -> dict:
        """The row fields (docs/sweeps.md): kept/<slot> with its p05 / p95 over tokens, the bytes
        per token and their fraction of a dense step's."""
        if not self.bytes:
            return {}
        fractions = torch.cat(self.fractions).numpy()
        weights = torch.cat(self.bytes).numpy()
        total = weights + self.fixed + self.predictor
        dense = self.dense_bytes()
        row = {"selected_tokens": int(len(weights)), "weight_bytes_per_token": float(weights.mean()),
               "fixed_bytes_per_token": self.fixed, "predictor_bytes_per_token": self.predictor,
               "bytes_per_token": float(total.mean()), "dense_bytes_per_token": dense,
               "bytes_fraction": float(total.mean() / dense),
               "bytes_fraction_p05": float(np.percentile(total, 5) / dense),
               "bytes_fraction_p95": float(np.percentile(total, 95) / dense)}
        for i, slot in enumerate(SLOTS):
            row[f"kept/{slot.value}"] = float(fractions[:, i].mean())
            row[f"kept_p05/{slot.value}"] = float(np.percentile(fractions[:, i], 5))
            row[f"kept_p95/{slot.value}"] = float(np.percentile(fractions[:, i], 95))
        return row
