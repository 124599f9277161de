"""Forward pre-hooks that record, per decoder layer, the layer input hidden state, the MLP's
input and the two tensors of the layer (head context, neuron activation), keeping them in the
graph."""

import torch
from torch import nn

from shadow_sweep.models.adapters import ArchitectureAdapter


class LayerRecorder:
    """Context manager; after a forward, `hidden[l]` is [B, T, D], `heads[l]` is [B, T, H*d],
    `mlp_inputs[l]` [B, T, D] and `neurons[l]` [B, T, I] (the last two [B*T, .] for OPT; the
    very tensors of the graph)."""

    def __init__(self, model: nn.Module, adapter: ArchitectureAdapter):
        self.model, self.adapter = model, adapter
        self.hidden: list[torch.Tensor] = []
        self.heads: list[torch.Tensor] = []
        self.neurons: list[torch.Tensor] = []
        self.mlp_inputs: list[torch.Tensor] = []
        self._handles = []

    def __enter__(self) -> "LayerRecorder":
        layers = self.adapter.decoder_layers(self.model)
        for layer in layers:
            self._handles.append(layer.register_forward_pre_hook(self._record_hidden, with_kwargs=True))
        for module in self.adapter.head_context_modules(self.model):
            self._handles.append(module.register_forward_pre_hook(lambda _m, args: self.heads.append(args[0])))
        for module in self.adapter.neuron_activation_modules(self.model):
            self._handles.append(module.register_forward_pre_hook(lambda _m, args: self.neurons.append(args[0])))
        for first, *_ in self.adapter.mlp_input_modules(self.model):
            self._handles.append(first.register_forward_pre_hook(lambda _m, args: self.mlp_inputs.append(args[0])))
        return self

    def _record_hidden(self, _module, args, kwargs) -> None:
        self.hidden.append(args[0] if args else kwargs["hidden_states"])

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def reset(self) -> None:
        self.hidden = []
        self.heads = []
        self.neurons = []
        self.mlp_inputs = []
