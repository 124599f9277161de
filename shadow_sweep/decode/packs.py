"""One-token steps in the C++ layer (kernels/decode_step.cpp, `decode_layers`): each layer's
tensors and selection as a `LayerPack`, in the layout of its blocks' points:

- attention `ahead`: q rows (the kept heads' `q_rows` of the dense weights, or a sliced copy),
  k/v rows of every cached group, o transposed, each attending head's K/V group;
- attention `input`: the transposed q/k/v block, o transposed, the rules on the attention input
  and on the head context (every head attends);
- MLP `ahead`: the neuron-major MLP and the kept neurons' `neuron_rows`;
- MLP `gate`: the gate's rows and the per-neuron up/down rows, the rule on act(gate);
- MLP `input`: the transposed gate/up block and down transposed, the rules on the MLP input and
  on the activation;
- step networks (selectors/rules.py StepNetwork) before the layer or its MLP: the units they
  choose replace the kept rows of the blocks they choose.
Every pack writes its kept counts (`COUNTED`) into the decoder's `counts` row of its layer.
"""

from typing import Optional

import torch

from shadow_sweep.decode.weights import IndexedLayer
from shadow_sweep.selectors.base import Point, Reads
from shadow_sweep.selectors.rules import ChannelRule, StepNetwork

COUNTED = ("attention_input", "head_context", "mlp_input", "neuron_activation", "kv_groups")  # kept per layer
PARTS = ("attention_weights", "attention", "mlp_weights", "gate", "norms", "step_networks")  # the C++ layer's time


def cpp_rule(module, rule: Optional[ChannelRule]):
    """A ChannelRule as the C++ `Rule` (None: inactive, every entry kept)."""
    converted = module.Rule()
    if rule is None:
        return converted
    converted.active = True
    if rule.keep is None:
        converted.threshold = float(rule.threshold)
    else:
        converted.keep = int(rule.keep)
    converted.scale = rule.scale
    return converted


def cpp_network(module, network: Optional[StepNetwork]):
    """A StepNetwork as the C++ `StepNetwork` (None: inactive)."""
    converted = module.StepNetwork()
    if network is None:
        return converted
    converted.active = True
    converted.weights = [w.float().contiguous() for w in network.weights]
    converted.biases = [b.float().contiguous() for b in network.biases]
    converted.relu = list(network.relu)
    converted.heads = network.heads
    converted.neurons = network.neurons
    converted.head_group = network.head_group
    converted.head_keep = -1 if network.head_keep is None else network.head_keep
    converted.neuron_keep = -1 if network.neuron_keep is None else network.neuron_keep
    return converted


class Packs:
    """A decoder's LayerPacks, built once per layer and sequence and reused by every step: a
    step whose weights are fixed for the sequence finds its packs as they are; a per-token step
    of kept rows (IndexedLayer) only sets the rows on its layer's pack. Rules are converted once
    (a point's plans are fixed). `clear` at a new sequence (new caches)."""

    def __init__(self, module):
        self.module = module
        self.rules: dict[tuple, tuple] = {}
        self.packs: dict[tuple, object] = {}

    def clear(self) -> None:
        self.packs.clear()

    def rule(self, rule: Optional[ChannelRule]):
        """The C++ form of a rule, converted once."""
        return self._converted(rule, cpp_rule)

    def network(self, network: Optional[StepNetwork]):
        """The C++ form of a step network, converted once."""
        return self._converted(network, cpp_network)

    def _converted(self, item, convert):
        key = (convert.__name__, id(item))
        if key not in self.rules:
            self.rules[key] = (item, convert(self.module, item))  # the item kept alive with its id
        return self.rules[key][1]

    def pack(self, decoder, index: int, w, cache, dense_kv: bool, plan):
        indexed = isinstance(w, IndexedLayer)
        key = (index, id(w.dense) if indexed else id(w), indexed, id(cache), dense_kv, id(plan))
        pack = self.packs.get(key)
        if pack is None:
            pack = self.packs[key] = layer_pack(decoder, index, w, cache, dense_kv, plan)
        elif indexed:
            set_rows(pack, decoder, w, plan)
        return pack


def set_rows(pack, decoder, w: IndexedLayer, plan) -> None:
    """An IndexedLayer's kept rows on its layer's pack (blocks chosen ahead only)."""
    if plan.attention != Point.input:
        pack.q_rows = w.q_rows
        pack.kv_groups = w.query_heads // decoder.shape.queries_per_kv
    if plan.mlp == Point.ahead:
        pack.neuron_rows = w.neuron_rows


def layer_pack(decoder, index: int, w, cache, dense_kv: bool, plan):
    """Layer `index`'s LayerPack: weights `w` (LayerWeights, dense or sliced, or an IndexedLayer
    of kept rows), its cache, `dense_kv` (K/V of every group from the dense weights), its plan."""
    module = decoder.kernels.module
    rules = decoder.packs
    pack = module.LayerPack()
    norms = decoder.norms[index].tensors
    pack.attention_norm = norms[0]
    pack.attention_norm_bias = norms[1]
    pack.mlp_norm = norms[2]
    pack.mlp_norm_bias = norms[3]
    indexed = isinstance(w, IndexedLayer)
    dense = decoder.dense[index]
    source = w.dense if indexed else w
    if plan.attention == Point.input:
        pack.qkv_t = decoder.layout(Point.input, index).qkv_t
        pack.q_bias = dense.q_bias
        pack.k_bias = dense.k_bias
        pack.v_bias = dense.v_bias
        pack.kv_groups = dense.kv_of_query
        pack.attention_input = rules.rule(plan.rules.get(Reads.attention_input))
        pack.head_context = rules.rule(plan.rules.get(Reads.head_context))
        pack.o = dense.o
    else:
        kv_source = dense if indexed or dense_kv else w
        pack.q = source.q
        pack.q_bias = source.q_bias
        pack.k = kv_source.k
        pack.k_bias = kv_source.k_bias
        pack.v = kv_source.v
        pack.v_bias = kv_source.v_bias
        pack.o = source.o
        pack.q_rows = w.q_rows if indexed else None
        pack.kv_groups = w.query_heads // decoder.shape.queries_per_kv if indexed or dense_kv else w.kv_of_query
    pack.o_bias = source.o_bias
    pack.up_bias = source.up_bias
    pack.down_bias = source.down_bias
    if plan.mlp == Point.gate:
        layout = decoder.layout(Point.gate, index)
        pack.gate = layout.gate
        pack.gate_rest = layout.rest
        pack.neuron_activation = rules.rule(plan.rules.get(Reads.gate_output))
    elif plan.mlp == Point.input:
        layout = decoder.layout(Point.input, index)
        pack.gate_up_t = layout.gate_up_t
        pack.down_t = layout.down_t
        pack.mlp_input = rules.rule(plan.rules.get(Reads.mlp_input))
        pack.neuron_activation = rules.rule(plan.rules.get(Reads.neuron_activation))
    else:
        pack.mlp = source.mlp
        pack.neuron_rows = w.neuron_rows if indexed else None
    pack.network_at_input = rules.network(plan.networks.get(Reads.layer_input))
    pack.network_at_mlp = rules.network(plan.networks.get(Reads.mlp_input))
    pack.queries_per_kv = decoder.shape.queries_per_kv
    pack.cache_k = cache.k
    pack.cache_v = cache.v
    pack.counts = decoder.counts[index]
    return pack


def fused_layers(decoder, first: int, x: torch.Tensor, weights: list, caches: list, plans: list, rotation,
                 dense_kv: bool, start_at_mlp: bool, stop_before_mlp: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One token through the layers first.. that `weights`, `caches` and `plans` belong to, in one
    C++ call -> (x, the last attention's head context, the last MLP input)."""
    packs = [decoder.packs.pack(decoder, first + i, w, cache, dense_kv, plan)
             for i, (w, cache, plan) in enumerate(zip(weights, caches, plans))]
    cos, sin = (None, None) if rotation is None else (part.reshape(-1) for part in rotation)
    norms = decoder.norms[first]
    position = caches[0].length - (1 if start_at_mlp else 0)  # the attention half wrote its K/V already
    x, context, mlp_input = decoder.kernels.module.decode_layers(
        x, packs, cos, sin, position, decoder.shape.head_dim, decoder.family.scale, norms.eps, norms.kind,
        norms.activation, start_at_mlp, stop_before_mlp, decoder.timings)
    for i, cache in enumerate(caches):
        if not (i == 0 and start_at_mlp):
            cache.length = position + 1
    return x, context, mlp_input
