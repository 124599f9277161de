"""The weight bytes one batch-1 decode step reads under a selection: one formula for the accuracy
path's realised selections (`selectors.accounting`) and the decode path's kept rows
(`decode.traffic`), so that quality is compared with the bytes the bench measures.

Per layer, from the kept counts of its four slots (attention input a of D, head-context
channels c of H d, MLP input m of D, neuron activation n of I) and the K/V groups g the kept
heads read, elements read:
- attention, point `ahead` (kept heads): q rows c x D, o columns D x c, k and v rows
  (KV, or g where the cache keeps only the kept groups) x d x D;
  point `input`: q/k/v columns (H + 2 KV) d x a, o columns D x c;
- MLP, point `ahead` (kept neurons): gate, up and down rows n x D each (no gate: up and down);
  point `gate`: the gate dense I x D, then up and down rows n x D (no gate: up dense, down n);
  point `input`: gate and up columns I x m each (no gate: up), down columns D x n;
- biases of the rows computed; every step also reads the fixed part (the token's embedding row,
  every norm, lm_head) and its selectors' predictor weights. K/V-cache reads depend on the
  context length and are left to the decode benchmark.
"""

from dataclasses import dataclass
from typing import Union

import torch
from torch import nn

from shadow_sweep.models.adapters import ArchitectureAdapter, ModelShape
from shadow_sweep.selectors.base import Point

Count = Union[int, torch.Tensor]  # an int, or a tensor of counts (one per token) broadcast alike


@dataclass(frozen=True)
class LinearSizes:
    """A decoder layer's linears: sizes, which have biases, and the element size."""

    hidden: int  # D
    heads: int  # H
    kv_heads: int  # KV
    head_dim: int  # d
    neurons: int  # I
    gated: bool
    element_size: int
    q_bias: bool = False
    k_bias: bool = False
    v_bias: bool = False
    o_bias: bool = False
    up_bias: bool = False
    down_bias: bool = False

    @classmethod
    def of(cls, model: nn.Module, adapter: ArchitectureAdapter, shape: ModelShape) -> "LinearSizes":
        """From layer 0's modules (every layer has the same sizes)."""
        q, k, v = adapter.attention_input_modules(model)[0]
        o = adapter.head_context_modules(model)[0]
        up = adapter.mlp_input_modules(model)[0][-1]
        down = adapter.neuron_activation_modules(model)[0]
        has = lambda m: getattr(m, "bias", None) is not None  # noqa: E731
        return cls(shape.hidden_size, shape.num_heads, shape.num_kv_heads, shape.head_dim, shape.num_neurons,
                   adapter.gate is not None, q.weight.element_size(), has(q), has(k), has(v), has(o), has(up),
                   has(down))


@dataclass
class LayerCounts:
    """Kept counts of one layer (ints, or tensors of one count per token)."""

    attention_input: Count
    head_context: Count  # channels: kept heads x d for a head selection
    kv_groups: Count
    mlp_input: Count
    neuron_activation: Count


def dense_counts(sizes: LinearSizes) -> LayerCounts:
    return LayerCounts(sizes.hidden, sizes.heads * sizes.head_dim, sizes.kv_heads, sizes.hidden, sizes.neurons)


def layer_bytes(sizes: LinearSizes, counts: LayerCounts, attention: Point, mlp: Point, dense_kv: bool) -> Count:
    """Weight bytes one step reads in one layer (the module docstring's formula). `attention`,
    `mlp`: the points of the blocks' selections; `dense_kv`: K/V of every group computed."""
    s = sizes
    a = counts.attention_input
    c = counts.head_context
    ahead_heads = attention == Point.ahead
    q_rows = c if ahead_heads else s.heads * s.head_dim
    kv_rows = (counts.kv_groups if ahead_heads and not dense_kv else s.kv_heads) * s.head_dim
    attention_elements = (q_rows * a + 2 * kv_rows * a + s.hidden * c + s.q_bias * q_rows
                          + (s.k_bias + s.v_bias) * kv_rows + s.o_bias * s.hidden)
    n = counts.neuron_activation
    if mlp == Point.ahead:
        gate_rows = n if s.gated else 0
        up_rows = n
    elif mlp == Point.gate:
        gate_rows = s.neurons if s.gated else 0
        up_rows = n if s.gated else s.neurons
    else:
        gate_rows = s.neurons if s.gated else 0
        up_rows = s.neurons
    mlp_elements = ((gate_rows + up_rows) * counts.mlp_input + s.hidden * n + s.up_bias * up_rows
                    + s.down_bias * s.hidden)
    return (attention_elements + mlp_elements) * s.element_size


def fixed_bytes(model: nn.Module, lm_head: nn.Module, embedding: nn.Embedding) -> int:
    """One embedding row, every norm's parameters, and lm_head."""
    norms = sum(p.numel() * p.element_size() for m in model.modules() if "norm" in type(m).__name__.lower()
                for p in m.parameters(recurse=False))
    row = embedding.weight[0].numel() * embedding.weight.element_size()
    return row + norms + sum(p.numel() * p.element_size() for p in lm_head.parameters())
