"""The two learned predictor kinds as data: what their network reads, how wide it is, how its
output splits into heads and neurons, and where a forward (or a decode step) runs it.

ShadowLLM:  x = layer-0 head context at the token (normalised) -> every layer l >= 1's
            head and neuron scores, one network:            [N, 1, H*d] -> [N, 1, (L-1)(H+I)];
            run once, after layer 0's attention.
DejaVu:     x_l = layer l's input hidden state at the token -> layer l's scores, one network
            per layer l >= 1 (grouped):                     [N, L-1, D] -> [N, L-1, H+I];
            run before each layer l >= 1.
Registered in `NETWORKS` by predictor name; kinds without a network (static, random, dense,
oracle) are absent.
"""

from dataclasses import dataclass

import torch

from shadow_sweep.config import PredictorConfig, PredictorName
from shadow_sweep.models.adapters import ModelShape
from shadow_sweep.predictors.networks import MLPShape
from shadow_sweep.predictors.targets import normalise_inputs
from shadow_sweep.traces.collect import TraceBatch


@dataclass(frozen=True)
class NetworkLayout:
    width_cap: int  # the paper's width: the default width never exceeds it
    one_network: bool  # one network for every layer (ShadowLLM) or one per layer (DejaVu)

    def default_width(self, hidden_size: int) -> int:
        """64 * max(2, D // 128), capped: 256 for SmolLM2-135M (D = 576), the paper's width
        (2048 ShadowLLM / 1000 DejaVu) from D = 5120 (OPT-13B) on."""
        return min(self.width_cap, 64 * max(2, hidden_size // 128))

    def mlp_shape(self, cfg: PredictorConfig, shape: ModelShape) -> MLPShape:
        width = cfg.width or self.default_width(shape.hidden_size)
        bottleneck = width // 4 if cfg.bottleneck is None else cfg.bottleneck
        predicted = shape.num_layers - 1
        units = shape.num_heads + shape.num_neurons
        if self.one_network:
            return MLPShape(1, shape.num_heads * shape.head_dim, width, cfg.depth, bottleneck, predicted * units)
        return MLPShape(predicted, shape.hidden_size, width, cfg.depth, bottleneck, units)

    def inputs(self, batch: TraceBatch) -> torch.Tensor:
        """[N, 1, H*d] (ShadowLLM) or [N, L-1, D] (DejaVu), normalised per row (and layer)."""
        if self.one_network:
            return normalise_inputs(batch.shadow_input)[:, None]
        return normalise_inputs(batch.dejavu_input[:, 1:])

    def split(self, out: torch.Tensor, shape: ModelShape) -> tuple[torch.Tensor, torch.Tensor]:
        """Network output -> (heads [N, L-1, H], neurons [N, L-1, I])."""
        if not self.one_network:
            return out[..., :shape.num_heads], out[..., shape.num_heads:]
        n = out.shape[0]
        predicted = shape.num_layers - 1
        heads = out[:, 0, :predicted * shape.num_heads].reshape(n, predicted, shape.num_heads)
        return heads, out[:, 0, predicted * shape.num_heads:].reshape(n, predicted, shape.num_neurons)

    def runs_after_layer_zero(self, layer: int) -> bool:
        """A decode step runs the network on layer 0's head context once layer 0 is done."""
        return self.one_network and layer == 0

    def runs_before(self, layer: int) -> bool:
        """A decode step runs layer `layer`'s network on its input before the layer."""
        return not self.one_network and layer > 0


NETWORKS: dict[PredictorName, NetworkLayout] = {
    PredictorName.shadowllm: NetworkLayout(width_cap=2048, one_network=True),
    PredictorName.dejavu: NetworkLayout(width_cap=1000, one_network=False),
}
