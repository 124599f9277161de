"""Batch-1 decode that computes only kept heads and neurons.

Per layer: q/k/v rows of the kept query heads and the K/V groups they read, attention over
the cache, the output projection over the kept heads' rows of its transposed weight; the
MLP over the kept neurons' up/gate rows and down rows (transposed). Norms, rotary
embeddings and activations are the model's own modules.

KV-cache policy: with masks fixed for a sequence (`per_sequence`, the accuracy path's
protocol), the prompt runs through the same sliced layers, so the cache holds only the kept
K/V groups and nothing skipped is ever needed later. With masks re-predicted every token,
later tokens may keep heads that earlier tokens skipped, so `LayerCache` then stores K/V of
every group (k/v projections stay dense; q, o and the MLP are sparse): the cost of that
policy is the dense k/v projection, reported by the benchmark.
"""

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from shadow_sweep.decode.families import DECODE_FAMILIES, LlamaFamily, OPTFamily
from shadow_sweep.decode.traffic import StepTraffic, kv_read_bytes, layer_sizes, layer_weight_bytes
from shadow_sweep.decode.weights import IndexedLayer, LayerWeights, head_rows, linear, linear_transposed
from shadow_sweep.models.loading import LoadedModel
from shadow_sweep.selectors.traffic import fixed_bytes


@dataclass
class LayerCache:
    """Preallocated K/V of one layer: [max_len, groups, d]; `length` positions are filled."""

    k: torch.Tensor
    v: torch.Tensor
    length: int = 0

    @classmethod
    def empty(cls, max_len: int, groups: int, head_dim: int, like: torch.Tensor) -> "LayerCache":
        """Zeros, not garbage: static-shape steps attend over unwritten slots (masked, and a
        masked NaN would still poison the softmax's weighted sum)."""
        shape = (max_len, groups, head_dim)
        return cls(like.new_zeros(shape), like.new_zeros(shape))

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        """Dynamic shapes: keys, values [length, groups, d] so far (no mask needed)."""
        end = self.length + k.shape[0]
        self.k[self.length:end], self.v[self.length:end] = k, v
        self.length = end
        return self.k[:end], self.v[:end], None

    def write_at(self, position: torch.Tensor, k: torch.Tensor, v: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Static shapes (CUDA graphs): one token's K/V written at `position` [1], a device
        tensor; returns the whole cache [max_len, groups, d] and valid [max_len] (slot <= position)."""
        self.k.index_copy_(0, position, k)
        self.v.index_copy_(0, position, v)
        return self.k, self.v, torch.arange(self.k.shape[0], device=position.device) <= position


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, groups: torch.Tensor, scale: float,
           valid: Optional[torch.Tensor]) -> torch.Tensor:
    """q [1, |Q|, T, d] over cached keys/values [S, groups, d] -> context [T, |Q| d]: each kept
    query head reads its K/V group (`groups` [|Q|]); causal over T, or `valid` [S] masks slots."""
    tokens = q.shape[2]
    if q.shape[1] == 0:  # no kept head (CUDA's attention kernels fail on zero heads)
        return q.new_zeros(tokens, 0)
    keys, values = keys[:, groups].transpose(0, 1)[None], values[:, groups].transpose(0, 1)[None]
    mask = None if valid is None else valid[None, None, None, :]
    context = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=mask is None and tokens > 1,
                                             scale=scale)
    return context[0].transpose(0, 1).reshape(tokens, -1)


class SparseDecoder:
    def __init__(self, loaded: LoadedModel, kernels=None):
        """`kernels` (decode.fused.gather_kernels): row kernels for IndexedLayer, and with
        `whole_layers` the C++ layer for every one-token step."""
        self.kernels = kernels
        self.whole_layers = getattr(kernels, "whole_layers", False)
        family = loaded.adapter.family
        if family not in DECODE_FAMILIES:
            raise ValueError(f"the sparse decode path supports the families {DECODE_FAMILIES}, not {family!r}")
        self.loaded, self.shape = loaded, loaded.shape
        self.family = LlamaFamily(loaded.model) if family == "llama" else OPTFamily(loaded.model)
        self.layers = list(loaded.adapter.decoder_layers(loaded.model))
        self.norms = [self.family.norms(layer) if self.whole_layers else None for layer in self.layers]
        self.dense = [self.family.weights(layer) for layer in self.layers]
        self.device = loaded.device
        for w in self.dense:
            w.query_heads = torch.arange(self.shape.num_heads, device=self.device)
            w.kv_of_query = w.query_heads // self.shape.queries_per_kv
        self.fixed_bytes = fixed_bytes(loaded.model, loaded.model.get_output_embeddings(),
                                       loaded.model.get_input_embeddings())
        self.sizes = layer_sizes(self.dense[0], self.shape)

    def dense_tensors(self) -> list[torch.Tensor]:
        """Every weight tensor a dense one-token step reads: each layer's projections and lm_head."""
        layers = [t for w in self.dense for t in (w.q, w.k, w.v, w.o, w.mlp)]
        return layers + [self.family.lm_head.weight]

    def step_traffic(self, weights: list, context: int, dense_kv: bool, predictor_bytes: int) -> StepTraffic:
        """Bytes a one-token step with these layer weights reads at this context length (decode.traffic)."""
        element_size = self.dense[0].q.element_size()
        projections = sum(layer_weight_bytes(w, self.sizes, dense_kv) for w in weights)
        cache = sum(kv_read_bytes(w.query_heads, self.shape.queries_per_kv, self.shape.head_dim, context, element_size)
                    for w in weights)
        return StepTraffic(projections, self.fixed_bytes, cache, predictor_bytes)

    def indexed(self, layer: int, heads: torch.Tensor, neurons: torch.Tensor) -> IndexedLayer:
        """Rows of kept query heads [|Q|] and neurons [|N|] (ascending indices), read in place
        by the fused kernels (no copy)."""
        return IndexedLayer.of(self.dense[layer], self.shape.head_dim, heads, neurons)

    def indexed_from(self, first: int, heads: list[torch.Tensor], neurons: list[torch.Tensor]) -> list[IndexedLayer]:
        """`indexed` for layers first.. from every layer's kept heads and neurons; the q/o rows of
        equal head counts in one op (per-layer ranking)."""
        heads, neurons = heads[first:], neurons[first:]
        if len({len(kept) for kept in heads}) == 1:
            q_rows = head_rows(torch.stack(heads), self.shape.head_dim).unbind(0)
        else:
            q_rows = [head_rows(kept, self.shape.head_dim) for kept in heads]
        return [IndexedLayer(self.dense[first + i], rows, kept_neurons, kept_heads)
                for i, (rows, kept_neurons, kept_heads) in enumerate(zip(q_rows, neurons, heads))]

    def sliced(self, layer: int, heads: torch.Tensor, neurons: torch.Tensor) -> LayerWeights:
        """Layer weights of kept query heads [|Q|] and neurons [|N|] (ascending indices)."""
        return self.dense[layer].sliced(self.shape.head_dim, heads, neurons, self.shape.queries_per_kv)

    def kept_cache(self, cache: LayerCache, w: LayerWeights) -> LayerCache:
        """A cache of every K/V group (a dense prompt) cut to the groups `w` keeps, in `w`'s order."""
        groups = torch.unique(w.query_heads // self.shape.queries_per_kv)
        return LayerCache(cache.k[:, groups].contiguous(), cache.v[:, groups].contiguous(), cache.length)

    def new_cache(self, max_len: int, weights: list[LayerWeights]) -> list[LayerCache]:
        like = self.dense[0].q
        return [LayerCache.empty(max_len, w.k.shape[0] // self.shape.head_dim, self.shape.head_dim, like)
                for w in weights]

    def layer(self, index: int, x: torch.Tensor, positions: torch.Tensor, w: LayerWeights | IndexedLayer,
              cache: LayerCache, rotation, kv: Optional[LayerWeights] = None, static: bool = False,
              token_masks: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T, D] -> (x [T, D], head context [T, |Q| d]). `rotation`: the family's rotary cos
        and sin at `positions` (None: learned positions), one per step for every layer. `kv`
        (the dense weights) supplies K/V for every group when masks change per token; else K/V
        of `w`'s kept groups only. `static`: one token at positions [1], static shapes
        (LayerCache.write_at). `token_masks` (dense `w` only): per-token masks [T, H], [T, I]
        multiplied into the head context and the neuron activation, as the masked path does
        (a sparse prefill). One-token dynamic steps go to the C++ layer when the kernels run
        whole layers (bench.kernel=fused_layer) and the family's norms and activation allow."""
        if not static and token_masks is None and self._fusable(index, index + 1, x):
            return self._fused_layers(index, x, [w], [cache], rotation, kv is not None)
        if isinstance(w, IndexedLayer):
            return self._indexed_layer(index, x, positions, w, cache, rotation)
        layer, d, f = self.layers[index], self.shape.head_dim, self.family
        tokens = x.shape[0]
        h = f.attention_input(layer, x)
        source = kv or w
        q = linear(h, w.q, w.q_bias).view(tokens, -1, d).transpose(0, 1)[None]  # [1, |Q|, T, d]
        k = linear(h, source.k, source.k_bias).view(tokens, -1, d).transpose(0, 1)[None]
        v = linear(h, source.v, source.v_bias).view(tokens, -1, d)
        q, k = f.position_queries_keys(q, k, rotation)
        k = k[0].transpose(0, 1)  # [T, groups, d]
        keys, values, valid = cache.write_at(positions, k, v) if static else cache.append(k, v)
        groups = w.kv_of_query if kv is None else w.query_heads // self.shape.queries_per_kv
        context = attend(q, keys, values, groups, f.scale, valid)
        head_mask, neuron_mask = token_masks if token_masks is not None else (None, None)
        if head_mask is not None:
            context = context * head_mask.to(context.dtype).repeat_interleave(d, dim=-1)
        x = x + linear_transposed(context, w.o, w.o_bias)
        h = f.mlp_input(layer, x)
        gate = linear(h, w.gate, None) if w.gate is not None else None
        hidden = f.activation(layer, gate, linear(h, w.up, w.up_bias))
        if neuron_mask is not None:
            hidden = hidden * neuron_mask.to(hidden.dtype)
        x = x + linear_transposed(hidden, w.down, w.down_bias)
        return x, context

    def run_layers(self, first: int, last: int, x: torch.Tensor, positions: torch.Tensor, weights: list,
                   caches: list[LayerCache], rotation, dense_kv: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Layers first..last-1 (`weights`, `caches`: every layer's, by index) -> (x, the last
        layer's head context). `dense_kv`: K/V of every group from the dense weights. One-token
        steps with whole-layer kernels run the span as ONE C++ call (no Python per layer)."""
        if self._fusable(first, last, x):
            return self._fused_layers(first, x, weights[first:last], caches[first:last], rotation, dense_kv)
        for index in range(first, last):
            x, context = self.layer(index, x, positions, weights[index], caches[index], rotation,
                                    self.dense[index] if dense_kv else None)
        return x, context

    def _fusable(self, first: int, last: int, x: torch.Tensor) -> bool:
        """One token, and every layer of the span runnable by the C++ layer with one setting."""
        norms = self.norms[first:last]
        if x.shape[0] != 1 or any(n is None for n in norms):
            return False
        return len({(n.eps, n.kind, n.activation) for n in norms}) == 1

    def _layer_pack(self, index: int, w: LayerWeights | IndexedLayer, cache: LayerCache, dense_kv: bool) -> list:
        """One layer's tensors for decode_layers (kernels/decode_step.cpp: LAYER_PACK). Sliced
        or dense weights read every row of theirs; an IndexedLayer its kept rows of the dense
        weights, with K/V of every group."""
        indexed = isinstance(w, IndexedLayer)
        source = w.dense if indexed else w
        kv_source = self.dense[index] if indexed or dense_kv else w
        groups = w.query_heads // self.shape.queries_per_kv if indexed or dense_kv else w.kv_of_query
        return [*self.norms[index].tensors, source.q, source.q_bias, kv_source.k, kv_source.k_bias, kv_source.v,
                kv_source.v_bias, source.o, source.o_bias, source.mlp, source.up_bias, source.down_bias,
                w.q_rows if indexed else None, w.neuron_rows if indexed else None, groups, cache.k, cache.v]

    def _fused_layers(self, first: int, x: torch.Tensor, weights: list, caches: list[LayerCache], rotation,
                      dense_kv: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One token through the layers first.. that `weights` and `caches` belong to, in one
        C++ call (decode_layers)."""
        packs = [self._layer_pack(first + i, w, cache, dense_kv) for i, (w, cache) in enumerate(zip(weights, caches))]
        cos, sin = (None, None) if rotation is None else (part.reshape(-1) for part in rotation)
        norms = self.norms[first]
        position = caches[0].length
        x, context = self.kernels.module.decode_layers(x, packs, cos, sin, position, self.shape.head_dim,
                                                       self.family.scale, norms.eps, norms.kind, norms.activation)
        for cache in caches:
            cache.length = position + 1
        return x, context

    def _indexed_layer(self, index: int, x: torch.Tensor, positions: torch.Tensor, w: IndexedLayer,
                       cache: LayerCache, rotation) -> tuple[torch.Tensor, torch.Tensor]:
        """One token through the row kernels: q, o, up, gate, down read only the kept rows
        in place; k and v stay dense (every group is cached under per-token masks)."""
        if x.shape[0] != 1:
            raise ValueError("the fused kernels decode one token at a time")
        kernels, layer, d, f, full = self.kernels, self.layers[index], self.shape.head_dim, self.family, w.dense
        h = f.attention_input(layer, x)
        add = lambda y, b, rows=None: y if b is None else y + (b if rows is None else b[rows])  # noqa: E731
        q = add(kernels.gather_gemv(full.q, w.q_rows, h[0]), full.q_bias, w.q_rows).view(1, -1, 1, d)
        k = linear(h, full.k, full.k_bias).view(1, -1, d).transpose(0, 1)[None]
        v = linear(h, full.v, full.v_bias).view(1, -1, d)
        q, k = f.position_queries_keys(q, k, rotation)
        keys, values, _ = cache.append(k[0].transpose(0, 1), v)
        context = attend(q, keys, values, w.query_heads // self.shape.queries_per_kv, f.scale, None)
        x = x + add(kernels.gather_transposed_gemv(full.o, w.q_rows, context[0]), full.o_bias)
        h = f.mlp_input(layer, x)[0]
        up = add(kernels.gather_gemv(full.up, w.neuron_rows, h), full.up_bias, w.neuron_rows)
        gate = kernels.gather_gemv(full.gate, w.neuron_rows, h) if full.gate is not None else None
        hidden = f.activation(layer, gate, up)
        return x + add(kernels.gather_transposed_gemv(full.down, w.neuron_rows, hidden), full.down_bias), context

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The last position's logits [V]: lm_head by the C++ row kernel for whole-layer
        kernels (a plain GEMV streams it at about half the bandwidth on the CPU)."""
        if not self.whole_layers:
            return self.family.logits(x[-1:])[0]
        h = self.family.final_hidden(x[-1:])[0]
        head = self.family.lm_head
        logits = self.kernels.gather_gemv(head.weight, None, h)
        return logits if head.bias is None else logits + head.bias

    @torch.no_grad()
    def step_at(self, token: torch.Tensor, position: torch.Tensor, weights: list[LayerWeights],
                caches: list[LayerCache]) -> torch.Tensor:
        """One token [1] at a position [1] given as device tensors -> logits [V], with fixed
        weights, static shapes and no host sync: the step a CUDA graph captures (decode.graphs)."""
        x = self.family.embed(token, position)
        rotation = self.family.rotation(position, x)
        for index, (w, cache) in enumerate(zip(weights, caches)):
            x, _ = self.layer(index, x, position, w, cache, rotation, static=True)
        return self.family.logits(x)[0]
