"""Per-example head and neuron masks, applied with forward pre-hooks.

`HeadNeuronMasks` multiplies, in every decoder layer l,
- the head context  x [B, T, H*d] by heads[:, l]   ([B, H], broadcast over T and d),
- the neuron activation x [B, T, I] by neurons[:, l] ([B, I], broadcast over T);
  OPT flattens it to [B*T, I] (batch-major), which is viewed back per example.
Masks are read when each hook fires, so they can be set before a forward pass or
during it (a predictor hooked on layer 0 may set the masks of all later layers).
A mask of batch 1 broadcasts over the batch. Removing the hooks restores the model
exactly: weights are never touched.
"""

from typing import Optional

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from shadow_sweep.models.adapters import ArchitectureAdapter, ModelShape


class HeadNeuronMasks:
    """Context manager installing mask hooks on a model; see the module docstring."""

    def __init__(self, model: nn.Module, adapter: ArchitectureAdapter, shape: ModelShape):
        self.model = model
        self.adapter = adapter
        self.shape = shape
        self.heads: Optional[torch.Tensor] = None  # [B, L, H]
        self.neurons: Optional[torch.Tensor] = None  # [B, L, I]
        self._handles: list[RemovableHandle] = []

    def set(self, heads: Optional[torch.Tensor] = None, neurons: Optional[torch.Tensor] = None) -> None:
        """Replace both masks (None = that kind unmasked)."""
        self.heads = None if heads is None else self._checked(heads, self.shape.num_heads, "heads")
        self.neurons = None if neurons is None else self._checked(neurons, self.shape.num_neurons, "neurons")

    def set_layer(self, layer: int, batch: int, heads: torch.Tensor, neurons: torch.Tensor) -> None:
        """Set layer `layer`'s masks [B, H] and [B, I]; the other layers stay as they are
        (all ones when no mask of this batch size is set yet)."""
        s = self.shape
        if self.heads is None or self.heads.shape[0] != batch:
            self.heads = torch.ones(batch, s.num_layers, s.num_heads, device=heads.device)
        if self.neurons is None or self.neurons.shape[0] != batch:
            self.neurons = torch.ones(batch, s.num_layers, s.num_neurons, device=neurons.device)
        self.heads[:, layer] = heads
        self.neurons[:, layer] = neurons

    def clear(self) -> None:
        self.heads = None
        self.neurons = None

    def _checked(self, mask: torch.Tensor, width: int, kind: str) -> torch.Tensor:
        expected = (self.shape.num_layers, width)
        if mask.dim() != 3 or tuple(mask.shape[1:]) != expected:
            raise ValueError(f"{kind} mask must have shape [B, {expected[0]}, {expected[1]}], got {list(mask.shape)}")
        return mask

    def __enter__(self) -> "HeadNeuronMasks":
        if self._handles:
            raise RuntimeError("mask hooks are already installed")
        heads_modules = self.adapter.head_context_modules(self.model)
        neuron_modules = self.adapter.neuron_activation_modules(self.model)
        for layer, (o_proj, down_proj) in enumerate(zip(heads_modules, neuron_modules)):
            self._handles.append(o_proj.register_forward_pre_hook(self._head_hook(layer)))
            self._handles.append(down_proj.register_forward_pre_hook(self._neuron_hook(layer)))
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()

    def _head_hook(self, layer: int):
        def hook(_module: nn.Module, args: tuple) -> Optional[tuple]:
            if self.heads is None:
                return None
            (x, *rest) = args
            mask = self.heads[:, layer].to(dtype=x.dtype, device=x.device)  # [B, H]
            per_head = x.unflatten(-1, (self.shape.num_heads, self.shape.head_dim))  # [B, T, H, d]
            return (per_head.mul(mask[:, None, :, None]).flatten(-2), *rest)

        return hook

    def _neuron_hook(self, layer: int):
        def hook(_module: nn.Module, args: tuple) -> Optional[tuple]:
            if self.neurons is None:
                return None
            (x, *rest) = args
            mask = self.neurons[:, layer].to(dtype=x.dtype, device=x.device)  # [B, I]
            per_example = x.view(mask.shape[0], -1, x.shape[-1]) if mask.shape[0] > 1 else x
            return (per_example.mul(mask[:, None, :]).view(x.shape), *rest)

        return hook
