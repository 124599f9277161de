"""Batch-1 decode that computes only what a point's selection keeps.

Per layer, in the layout of each block's selection point (decode.selection.LayerPlan): kept
heads chosen ahead read the q rows of those heads and the K/V groups they read, attention over
the cache, the output projection over the kept heads' rows of its transposed weight; kept
neurons chosen ahead their up/gate rows and down rows (transposed); selections at the gate or
at an input apply their rules to the layer's own tensors inside the step (the C++ layer reads
only the kept rows of transposed copies, `weights.InputLayout` / `GateLayout`; torch ops apply
the rules as masks). Norms, rotary embeddings and activations are the model's own modules.
The prompt runs through the model itself (decode.selection.prefill); its K/V is copied into
the caches (decode.cache).
"""

from typing import Optional

import torch

from shadow_sweep.decode.cache import LayerCache, attend
from shadow_sweep.decode.families import DECODE_FAMILIES, LlamaFamily, OPTFamily
from shadow_sweep.decode.packs import COUNTED, PARTS, Packs, fused_layers
from shadow_sweep.decode.selection import DENSE_PLAN, LayerPlan
from shadow_sweep.decode.traffic import StepRecord, StepTraffic, layer_sizes
from shadow_sweep.decode.weights import (GateLayout, IndexedLayer, InputLayout, LayerWeights, layout_bytes, linear,
                                         linear_transposed)
from shadow_sweep.models.loading import LoadedModel
from shadow_sweep.selectors.base import Point, Reads
from shadow_sweep.selectors.rules import ChannelRule
from shadow_sweep.selectors.traffic import LayerCounts, fixed_bytes, layer_bytes


class SparseDecoder:
    def __init__(self, loaded: LoadedModel, kernels=None):
        """`kernels` (decode.fused.gather_kernels): row kernels for IndexedLayer, and with
        `whole_layers` the C++ layer for every one-token step."""
        self.kernels = kernels
        self.whole_layers = getattr(kernels, "whole_layers", False)
        family = loaded.adapter.family
        if family not in DECODE_FAMILIES:
            raise ValueError(f"the sparse decode path supports the families {DECODE_FAMILIES}, not {family!r}")
        self.loaded = loaded
        self.shape = loaded.shape
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
        self.counts = torch.zeros(self.shape.num_layers, len(COUNTED), dtype=torch.long)  # the last step's
        self.timings = torch.zeros(len(PARTS), dtype=torch.float64)  # seconds per part in the C++ layer, summed
        self.layouts: dict[tuple[Point, int], InputLayout | GateLayout] = {}
        self.packs = Packs(kernels.module) if self.whole_layers else None

    def dense_tensors(self) -> list[torch.Tensor]:
        """Every weight tensor a dense one-token step reads: each layer's projections and lm_head."""
        layers = [t for w in self.dense for t in (w.q, w.k, w.v, w.o, w.mlp)]
        return layers + [self.family.lm_head.weight]

    def layout(self, point: Point, index: int) -> InputLayout | GateLayout:
        """Layer `index`'s weights laid out for selections at `point` (gate or input), made on first
        use and kept (`layout_bytes` counts them)."""
        key = (point, index)
        if key not in self.layouts:
            make = InputLayout if point == Point.input else GateLayout
            self.layouts[key] = make.of(self.dense[index])
        return self.layouts[key]

    def layout_bytes(self) -> int:
        """Memory of the extra weight layouts made so far (beyond the dense weights)."""
        return sum(layout_bytes(layout) for layout in self.layouts.values())

    def step_traffic(self, step: StepRecord, context: int, predictor_bytes: int) -> StepTraffic:
        """Bytes a one-token step read at this context length (decode.traffic), from its record."""
        element_size = self.dense[0].q.element_size()
        projections = 0
        cache = 0
        for counts, plan, groups in zip(step.counts.tolist(), step.plans, step.groups):
            kept = LayerCounts(counts[0], counts[1], groups, counts[2], counts[3])
            projections += layer_bytes(self.sizes, kept, plan.attention, plan.mlp, dense_kv=False)
            cache += 2 * context * counts[4] * self.shape.head_dim * element_size
        return StepTraffic(projections, self.fixed_bytes, cache, predictor_bytes)

    def record(self, weights: list, plans: list[LayerPlan], dense_kv: bool) -> StepRecord:
        """What the last step kept (its counts), with the layers' plans and the K/V groups each
        computed (every group where the cache keeps them all, else the kept ones)."""
        groups = []
        for w, plan in zip(weights, plans):
            computed = dense_kv or plan.attention == Point.input or isinstance(w, IndexedLayer)
            groups.append(self.shape.num_kv_heads if computed else w.k.shape[0] // self.shape.head_dim)
        return StepRecord(self.counts.clone(), plans, groups)

    def indexed(self, layer: int, heads: Optional[torch.Tensor], neurons: Optional[torch.Tensor]) -> IndexedLayer:
        """Rows of kept query heads [|Q|] and neurons [|N|] (ascending indices; None: every one),
        read in place by the fused kernels (no copy)."""
        return IndexedLayer.of(self.dense[layer], self.shape.head_dim, heads, neurons)

    def sliced(self, layer: int, heads: Optional[torch.Tensor], neurons: Optional[torch.Tensor]) -> LayerWeights:
        """Layer weights of kept query heads [|Q|] and neurons [|N|] (ascending; None: every one)."""
        dense = self.dense[layer]
        heads = dense.query_heads if heads is None else heads
        neurons = torch.arange(self.shape.num_neurons, device=self.device) if neurons is None else neurons
        return dense.sliced(self.shape.head_dim, heads, neurons, self.shape.queries_per_kv)

    def kept_cache(self, cache: LayerCache, w: LayerWeights) -> LayerCache:
        """A cache of every K/V group cut to the groups `w` keeps, in `w`'s order."""
        groups = torch.unique(w.query_heads // self.shape.queries_per_kv)
        return LayerCache(cache.k[:, groups].contiguous(), cache.v[:, groups].contiguous(), cache.length)

    def new_cache(self, max_len: int, weights: list[LayerWeights]) -> list[LayerCache]:
        like = self.dense[0].q
        return [LayerCache.empty(max_len, w.k.shape[0] // self.shape.head_dim, self.shape.head_dim, like)
                for w in weights]

    def caches_from(self, past, max_len: int) -> list[LayerCache]:
        """HF's cache after a prompt (every K/V group; rotary applied) -> our caches of `max_len`."""
        caches = self.new_cache(max_len, self.dense)
        for cache, layer in zip(caches, past.layers):
            keys = layer.keys[0].transpose(0, 1)  # [T, groups, d]
            cache.append(keys, layer.values[0].transpose(0, 1))
        return caches

    def attention(self, index: int, x: torch.Tensor, positions: torch.Tensor, w: LayerWeights, cache: LayerCache,
                  rotation, kv: Optional[LayerWeights] = None, static: bool = False, plan: LayerPlan = DENSE_PLAN
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T, D] -> (x + attention [T, D], head context [T, |Q| d]) in torch ops. `rotation`:
        the family's rotary cos and sin at `positions` (None: learned positions). `kv` (the
        dense weights) supplies K/V for every group when masks change per token; else K/V of
        `w`'s kept groups only. `static`: one token at positions [1], static shapes
        (LayerCache.write_at). In-step rules of `plan` mask the input and the context."""
        layer = self.layers[index]
        d = self.shape.head_dim
        f = self.family
        tokens = x.shape[0]
        h = self._masked(index, 0, f.attention_input(layer, x), plan.rules.get(Reads.attention_input))
        source = kv or w
        q = linear(h, w.q, w.q_bias).view(tokens, -1, d).transpose(0, 1)[None]  # [1, |Q|, T, d]
        k = linear(h, source.k, source.k_bias).view(tokens, -1, d).transpose(0, 1)[None]
        v = linear(h, source.v, source.v_bias).view(tokens, -1, d)
        q, k = f.position_queries_keys(q, k, rotation)
        k = k[0].transpose(0, 1)  # [T, groups, d]
        keys, values, valid = cache.write_at(positions, k, v) if static else cache.append(k, v)
        groups = w.kv_of_query if kv is None else w.query_heads // self.shape.queries_per_kv
        self.counts[index, 4] = len(torch.unique(w.query_heads // self.shape.queries_per_kv))
        context = attend(q, keys, values, groups, f.scale, valid)
        shown = self._masked(index, 1, context, plan.rules.get(Reads.head_context))
        return x + linear_transposed(shown, w.o, w.o_bias), context

    def mlp(self, index: int, x: torch.Tensor, w: LayerWeights, plan: LayerPlan = DENSE_PLAN) -> torch.Tensor:
        """x [T, D] -> x + MLP(norm(x)) in torch ops, the in-step rules of `plan` as masks."""
        layer = self.layers[index]
        f = self.family
        h = self._masked(index, 2, f.mlp_input(layer, x), plan.rules.get(Reads.mlp_input))
        gate = linear(h, w.gate, None) if w.gate is not None else None
        up = linear(h, w.up, w.up_bias)
        hidden = f.activation(layer, gate, up)
        at_gate = plan.rules.get(Reads.gate_output)
        if at_gate is not None:
            mask = at_gate.mask(f.gate_activation(layer, gate, up))
            self.counts[index, 3] = int(mask[-1].sum())
            hidden = hidden * mask.to(hidden.dtype)
        else:
            hidden = self._masked(index, 3, hidden, plan.rules.get(Reads.neuron_activation))
        return x + linear_transposed(hidden, w.down, w.down_bias)

    def _masked(self, index: int, column: int, x: torch.Tensor, rule: Optional[ChannelRule]) -> torch.Tensor:
        """x [T, U] with `rule`'s mask applied (None: x); records the kept count of one token."""
        if rule is None:
            self.counts[index, column] = x.shape[-1]
            return x
        mask = rule.mask(x)
        self.counts[index, column] = int(mask[-1].sum())
        return x * mask.to(x.dtype)

    def run_layers(self, first: int, last: int, x: torch.Tensor, positions: torch.Tensor, weights: list,
                   caches: list[LayerCache], rotation, dense_kv: bool, plans: list[LayerPlan],
                   start_at_mlp: bool = False, stop_before_mlp: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One token through layers first..last-1 (`weights`, `caches`, `plans`: every layer's, by
        index) -> (x, the last attention's head context, the last MLP's input). `dense_kv`: K/V of
        every group from the dense weights. `start_at_mlp`: layer `first`'s attention already
        ran; `stop_before_mlp`: layer last-1 stops before its MLP. With whole-layer kernels the
        span is ONE C++ call (no Python per layer)."""
        if self._fusable(first, last, x):
            return fused_layers(self, first, x, weights[first:last], caches[first:last], plans[first:last],
                                rotation, dense_kv, start_at_mlp, stop_before_mlp)
        context = x.new_zeros(x.shape[0], 0)
        for index in range(first, last):
            w = weights[index]
            plan = plans[index]
            if not (index == first and start_at_mlp):
                x, context = self._attention_of(index, x, positions, w, caches[index], rotation, dense_kv, plan)
            if index == last - 1 and stop_before_mlp:
                return x, context, self.family.mlp_input(self.layers[index], x)
            x = self._mlp_of(index, x, w, plan)
        return x, context, x

    def _attention_of(self, index, x, positions, w, cache, rotation, dense_kv, plan):
        if isinstance(w, IndexedLayer):
            return self._indexed_attention(index, x, w, cache, rotation)
        return self.attention(index, x, positions, w, cache, rotation, self.dense[index] if dense_kv else None,
                              plan=plan)

    def _mlp_of(self, index, x, w, plan):
        if isinstance(w, IndexedLayer):
            return self._indexed_mlp(index, x, w)
        return self.mlp(index, x, w, plan)

    def _fusable(self, first: int, last: int, x: torch.Tensor) -> bool:
        """One token, and every layer of the span runnable by the C++ layer with one setting."""
        norms = self.norms[first:last]
        if x.shape[0] != 1 or any(n is None for n in norms):
            return False
        return len({(n.eps, n.kind, n.activation) for n in norms}) == 1

    def _indexed_attention(self, index: int, x: torch.Tensor, w: IndexedLayer, cache: LayerCache, rotation
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """One token's attention through the row kernels: q and o read only the kept heads' rows
        in place; k and v stay dense (every group is cached under per-token masks)."""
        if x.shape[0] != 1:
            raise ValueError("the fused kernels decode one token at a time")
        kernels = self.kernels
        layer = self.layers[index]
        d = self.shape.head_dim
        f = self.family
        full = w.dense
        rows = torch.arange(full.q.shape[0], device=self.device) if w.q_rows is None else w.q_rows
        h = f.attention_input(layer, x)
        q = _add(kernels.gather_gemv(full.q, rows, h[0]), full.q_bias, rows).view(1, -1, 1, d)
        k = linear(h, full.k, full.k_bias).view(1, -1, d).transpose(0, 1)[None]
        v = linear(h, full.v, full.v_bias).view(1, -1, d)
        q, k = f.position_queries_keys(q, k, rotation)
        keys, values, _ = cache.append(k[0].transpose(0, 1), v)
        context = attend(q, keys, values, w.query_heads // self.shape.queries_per_kv, f.scale, None)
        self.counts[index, 0] = self.shape.hidden_size
        self.counts[index, 1] = len(rows)
        self.counts[index, 4] = len(torch.unique(w.query_heads // self.shape.queries_per_kv))
        return x + _add(kernels.gather_transposed_gemv(full.o, rows, context[0]), full.o_bias), context

    def _indexed_mlp(self, index: int, x: torch.Tensor, w: IndexedLayer) -> torch.Tensor:
        """One token's MLP through the row kernels: the kept neurons' rows, read in place."""
        kernels = self.kernels
        full = w.dense
        neurons = w.neuron_rows
        if neurons is None:
            neurons = torch.arange(full.mlp.shape[0], device=self.device)
        h = self.family.mlp_input(self.layers[index], x)[0]
        up = _add(kernels.gather_gemv(full.up, neurons, h), full.up_bias, neurons)
        gate = kernels.gather_gemv(full.gate, neurons, h) if full.gate is not None else None
        hidden = self.family.activation(self.layers[index], gate, up)
        self.counts[index, 2] = self.shape.hidden_size
        self.counts[index, 3] = len(neurons)
        return x + _add(kernels.gather_transposed_gemv(full.down, neurons, hidden), full.down_bias)

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
            x, _ = self.attention(index, x, position, w, cache, rotation, static=True)
            x = self.mlp(index, x, w)
        return self.family.logits(x)[0]


def _add(y: torch.Tensor, bias: Optional[torch.Tensor], rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y + bias (or bias[rows]); y without a bias."""
    if bias is None:
        return y
    return y + (bias if rows is None else bias[rows])
