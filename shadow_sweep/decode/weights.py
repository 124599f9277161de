"""Per-layer weights cut down to the kept structures, laid out for row gathers.

For one decoder layer and kept query heads Q (and the K/V groups G they read), kept
neurons N:
    q  [|Q| d, D]   k, v [|G| d, D]      rows of the projections (row-major: a kept head's rows
    o  [|Q| d, D]                          are contiguous); o is stored TRANSPOSED so that its
    mlp [|N|, parts, D]                    kept columns are contiguous rows too.
`mlp` is neuron-major: neuron j's up row, gate row (gated MLPs) and down column (down
transposed) lie next to each other, so a kept neuron is one contiguous read of parts x D
elements. Scattered rows of D elements stream slower than contiguous ones on a CPU (its
prefetchers fetch past each row's end): at 50% kept, 0.44-0.60 of the read probe row-major
against 0.57-0.72 neuron-major on SmolLM2's MLPs, two days of this VM (docs/decode.md).
`up`, `gate` and `down` are strided views of it.
`sliced(keep_heads, keep_neurons)` gathers once (per sequence, or per token in the
re-predicting mode without row kernels).
"""

from dataclasses import dataclass
from typing import Optional

import torch

from shadow_sweep.sparsity.topk import expand_indices


def head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """The weight rows of heads [..., k] -> [..., k d]: head h owns rows h*d .. h*d + d - 1."""
    return expand_indices(heads, head_dim)


def neuron_major(up: torch.Tensor, gate: Optional[torch.Tensor], down_t: torch.Tensor) -> torch.Tensor:
    """up, gate [I, D] and down transposed [I, D] -> mlp [I, parts, D] (parts 3, or 2 without gate)."""
    return torch.stack([t for t in (up, gate, down_t) if t is not None], 1)


@dataclass
class LayerWeights:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor  # transposed
    mlp: torch.Tensor  # [|N|, parts, D]: up, gate (gated MLPs), down transposed, per neuron
    q_bias: Optional[torch.Tensor] = None
    k_bias: Optional[torch.Tensor] = None
    v_bias: Optional[torch.Tensor] = None
    o_bias: Optional[torch.Tensor] = None
    up_bias: Optional[torch.Tensor] = None
    down_bias: Optional[torch.Tensor] = None
    query_heads: Optional[torch.Tensor] = None  # [|Q|] kept query heads (model numbering)
    kv_of_query: Optional[torch.Tensor] = None  # [|Q|] each kept query head's K/V group among the kept groups

    @property
    def up(self) -> torch.Tensor:
        return self.mlp[:, 0]

    @property
    def gate(self) -> Optional[torch.Tensor]:
        return self.mlp[:, 1] if self.mlp.shape[1] == 3 else None

    @property
    def down(self) -> torch.Tensor:
        """Transposed: [|N|, D]."""
        return self.mlp[:, -1]

    def sliced(self, head_dim: int, keep_heads: torch.Tensor, keep_neurons: torch.Tensor,
               queries_per_kv: int) -> "LayerWeights":
        """Only the kept query heads (with the K/V groups they read) and kept neurons."""
        groups = torch.unique(keep_heads // queries_per_kv)
        q_rows, kv_rows = head_rows(keep_heads, head_dim), head_rows(groups, head_dim)
        pick = lambda t, rows: None if t is None else t.index_select(0, rows).contiguous()  # noqa: E731
        return LayerWeights(
            q=pick(self.q, q_rows), k=pick(self.k, kv_rows), v=pick(self.v, kv_rows), o=pick(self.o, q_rows),
            mlp=pick(self.mlp, keep_neurons),
            q_bias=pick(self.q_bias, q_rows), k_bias=pick(self.k_bias, kv_rows), v_bias=pick(self.v_bias, kv_rows),
            o_bias=self.o_bias, up_bias=pick(self.up_bias, keep_neurons), down_bias=self.down_bias,
            query_heads=keep_heads, kv_of_query=torch.searchsorted(groups, keep_heads // queries_per_kv))


@dataclass
class IndexedLayer:
    """A layer's dense weights plus the rows to read: the fused kernels compute only those
    rows without copying them (per-token masks); q_rows index q and o, neuron_rows up, gate
    and down (None: every row)."""

    dense: LayerWeights
    q_rows: Optional[torch.Tensor]
    neuron_rows: Optional[torch.Tensor]
    query_heads: torch.Tensor

    @classmethod
    def of(cls, dense: LayerWeights, head_dim: int, keep_heads: Optional[torch.Tensor],
           keep_neurons: Optional[torch.Tensor]) -> "IndexedLayer":
        """Kept query heads and neurons (ascending; None: every one)."""
        rows = None if keep_heads is None else head_rows(keep_heads, head_dim)
        heads = dense.query_heads if keep_heads is None else keep_heads
        return cls(dense, rows, keep_neurons, heads)


@dataclass
class InputLayout:
    """TEAL's layout for selections at a linear's input: every weight transposed, so that the
    kept channels of its input are contiguous rows. q/k/v in one block, gate and up in one."""

    qkv_t: torch.Tensor  # [D, (H + 2 KV) d]
    gate_up_t: torch.Tensor  # [D, 2 I]: gate's columns, then up's (no gate: up's [D, I])
    down_t: torch.Tensor  # [I, D]

    @classmethod
    def of(cls, w: LayerWeights) -> "InputLayout":
        gate_up = torch.cat([w.gate, w.up]) if w.gate is not None else w.up
        return cls(torch.cat([w.q, w.k, w.v]).t().contiguous(), gate_up.t().contiguous(), w.down.contiguous())


@dataclass
class GateLayout:
    """The layout for selections at the gate (CATS): the gate's rows dense, then per neuron its
    up row and down column adjacent (no gate: fc1's rows, then the down columns)."""

    gate: torch.Tensor  # [I, D]
    rest: torch.Tensor  # [I, 2, D] (up, down transposed); no gate: [I, 1, D]

    @classmethod
    def of(cls, w: LayerWeights) -> "GateLayout":
        if w.gate is None:
            return cls(w.up.contiguous(), w.mlp[:, 1:].contiguous())
        return cls(w.gate.contiguous(), torch.stack([w.up, w.down], 1))


def layout_bytes(layout) -> int:
    """The bytes of a layout's tensors (InputLayout, GateLayout)."""
    return sum(t.numel() * t.element_size() for t in vars(layout).values())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """x @ weight^T + bias for weights stored as rows (q, k, v, up, gate)."""
    return torch.nn.functional.linear(x, weight, bias)


def linear_transposed(x: torch.Tensor, weight_t: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """x @ weight_t (+ bias) for weights stored transposed (o, down)."""
    out = x @ weight_t
    return out if bias is None else out + bias
