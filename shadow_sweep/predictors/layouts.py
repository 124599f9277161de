"""A learned selector's network as data: what it reads, how wide it is, which units it predicts,
how its output splits into heads and neurons, and where a forward (or a decode step) runs it.

One network (ShadowLLM):  x = layer-0 head context at the token (normalised) -> every layer
            l >= 1's scores:                            [N, 1, H*d] -> [N, 1, (L-1) U];
            run once, after layer 0's attention.
One per layer (DejaVu):   x_l = an input of layer l at the token (its input hidden state, or
            its MLP's input) -> layer l's scores, one network per layer l >= 1 (grouped):
                                                        [N, L-1, D] -> [N, L-1, U];
            run before layer l (or before its MLP).
U = H (if it predicts heads) + I (if it predicts neurons). The layouts themselves are declared
by the selectors (shadow_sweep/selectors): this module only computes with them.
"""

from dataclasses import dataclass
from typing import Optional

import torch

from shadow_sweep.config import PredictorConfig
from shadow_sweep.models.adapters import ModelShape
from shadow_sweep.predictors.networks import MLPShape
from shadow_sweep.predictors.targets import normalise_inputs
from shadow_sweep.traces.collect import TraceBatch

Scores = tuple[Optional[torch.Tensor], Optional[torch.Tensor]]  # (heads [N, L-1, H], neurons [N, L-1, I])


@dataclass(frozen=True)
class NetworkLayout:
    width_cap: int  # the paper's width: the default width never exceeds it
    one_network: bool  # one network for every layer (ShadowLLM) or one per layer (DejaVu)
    input_field: str  # the TraceBatch field it reads (shadow_input, dejavu_input or mlp_input)
    heads: bool = True  # it predicts heads
    neurons: bool = True  # it predicts neurons

    def default_width(self, hidden_size: int) -> int:
        """64 * max(2, D // 128), capped: 256 for SmolLM2-135M (D = 576), the paper's width
        (2048 ShadowLLM / 1000 DejaVu) from D = 5120 (OPT-13B) on."""
        return min(self.width_cap, 64 * max(2, hidden_size // 128))

    def units(self, shape: ModelShape) -> int:
        return shape.num_heads * self.heads + shape.num_neurons * self.neurons

    def mlp_shape(self, cfg: PredictorConfig, shape: ModelShape) -> MLPShape:
        width = cfg.width or self.default_width(shape.hidden_size)
        bottleneck = width // 4 if cfg.bottleneck is None else cfg.bottleneck
        predicted = shape.num_layers - 1
        if self.one_network:
            inputs = shape.num_heads * shape.head_dim
            return MLPShape(1, inputs, width, cfg.depth, bottleneck, predicted * self.units(shape))
        return MLPShape(predicted, shape.hidden_size, width, cfg.depth, bottleneck, self.units(shape))

    def inputs(self, batch: TraceBatch) -> torch.Tensor:
        """[N, 1, H*d] (one network) or [N, L-1, D] (one per layer), normalised per row (and layer)."""
        x = getattr(batch, self.input_field)
        return normalise_inputs(x)[:, None] if self.one_network else normalise_inputs(x[:, 1:])

    def split(self, out: torch.Tensor, shape: ModelShape) -> Scores:
        """Network output -> (heads [N, L-1, H] or None, neurons [N, L-1, I] or None). One
        network's output holds every predicted layer's heads, then every layer's neurons."""
        heads_width = shape.num_heads * self.heads
        if self.one_network:
            predicted = shape.num_layers - 1
            flat = out[:, 0]
            heads = flat[:, :predicted * heads_width].unflatten(-1, (predicted, shape.num_heads))
            neurons = flat[:, predicted * heads_width:].unflatten(-1, (predicted, shape.num_neurons))
        else:
            heads = out[..., :heads_width]
            neurons = out[..., heads_width:]
        return heads if self.heads else None, neurons if self.neurons else None

    def layer_columns(self, layer: int, shape: ModelShape) -> tuple[slice, slice]:
        """One network: the output columns of layer `layer` (>= 1)'s heads and neurons."""
        heads_width = shape.num_heads * self.heads
        neurons_width = shape.num_neurons * self.neurons
        first_neuron = (shape.num_layers - 1) * heads_width + (layer - 1) * neurons_width
        heads = slice((layer - 1) * heads_width, layer * heads_width)
        return heads, slice(first_neuron, first_neuron + neurons_width)

    @property
    def layerwise(self) -> bool:
        """It decides one layer at a time (one network per layer)."""
        return not self.one_network

    def runs_after_layer_zero(self, layer: int) -> bool:
        """A decode step runs the network on layer 0's head context once layer 0 is done."""
        return self.one_network and layer == 0

    def runs_before(self, layer: int) -> bool:
        """A decode step runs layer `layer`'s network on its input before the layer."""
        return not self.one_network and layer > 0
