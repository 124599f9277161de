"""Head and neuron masks, per example or per token, applied with forward pre-hooks.

`HeadNeuronMasks` multiplies, in every decoder layer l,
- the head context  x [B, T, H*d] by that layer's head mask,
- the neuron activation x [B, T, I] by that layer's neuron mask
  (OPT flattens it to [B*T, I], batch-major; it is viewed back per example).
A layer's mask is [B, U] (one mask per example, broadcast over T) or [B, T, U] (one per
token); a mask of batch 1 broadcasts over the batch. With `dense_before` [B] set, the
positions t < dense_before[b] of row b stay unmasked (a dense prompt).
Masks are read when each hook fires, so they can be set before a forward pass or during it
(a predictor hooked on layer 0 sets the masks of later layers). Removing the hooks restores
the model exactly: weights are never touched.
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
        self.heads: list[Optional[torch.Tensor]] = [None] * shape.num_layers  # [B, H] or [B, T, H]
        self.neurons: list[Optional[torch.Tensor]] = [None] * shape.num_layers  # [B, I] or [B, T, I]
        self.dense_before: Optional[torch.Tensor] = None  # [B]
        self._handles: list[RemovableHandle] = []

    def set(self, heads: Optional[torch.Tensor] = None, neurons: Optional[torch.Tensor] = None) -> None:
        """Every layer's masks from heads [B, L, H] and neurons [B, L, I] (None = unmasked)."""
        layers = self.shape.num_layers
        if heads is not None:
            self._check(heads, self.shape.num_heads, "heads")
        if neurons is not None:
            self._check(neurons, self.shape.num_neurons, "neurons")
        self.heads = [None if heads is None else heads[:, layer] for layer in range(layers)]
        self.neurons = [None if neurons is None else neurons[:, layer] for layer in range(layers)]

    def set_layer(self, layer: int, heads: torch.Tensor, neurons: torch.Tensor) -> None:
        """Layer `layer`'s masks: [B, H] and [B, I], or per token [B, T, H] and [B, T, I]."""
        self.heads[layer] = heads
        self.neurons[layer] = neurons

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every layer's masks as heads [B, L, H] and neurons [B, L, I], or [B, T, L, U] when some
        layer's mask is per token (unset layers as ones); for inspection and tests."""
        def stack(masks: list[Optional[torch.Tensor]], width: int) -> torch.Tensor:
            known = [m for m in masks if m is not None]
            if not known:
                raise ValueError("no mask is set")
            lead = max((m.shape[:-1] for m in known), key=len)
            ones = known[0].new_ones(*lead, width)
            return torch.stack([ones if m is None else m.expand(*lead, width) if m.dim() == len(lead) + 1
                                else m[:, None].expand(*lead, width) for m in masks], len(lead))

        return stack(self.heads, self.shape.num_heads), stack(self.neurons, self.shape.num_neurons)

    def clear(self) -> None:
        self.heads = [None] * self.shape.num_layers
        self.neurons = [None] * self.shape.num_layers
        self.dense_before = None

    def _check(self, mask: torch.Tensor, width: int, kind: str) -> None:
        expected = (self.shape.num_layers, width)
        if mask.dim() != 3 or tuple(mask.shape[1:]) != expected:
            raise ValueError(f"{kind} mask must have shape [B, {expected[0]}, {expected[1]}], "
                             f"got {list(mask.shape)}")

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

    def per_token(self, mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """A layer's mask as [B or 1, T or 1, U] in x's dtype, the dense prompt applied."""
        mask = mask.to(dtype=x.dtype, device=x.device)
        mask = mask[:, None] if mask.dim() == 2 else mask
        if self.dense_before is None:
            return mask
        tokens = x.shape[-2]
        prompt = torch.arange(tokens, device=x.device)[None, :] < self.dense_before.to(x.device)[:, None]
        return torch.where(prompt[..., None], torch.ones((), dtype=x.dtype, device=x.device), mask)

    def _head_hook(self, layer: int):
        def hook(_module: nn.Module, args: tuple) -> Optional[tuple]:
            if self.heads[layer] is None:
                return None
            (x, *rest) = args
            mask = self.per_token(self.heads[layer], x)  # [B, T, H]
            per_head = x.unflatten(-1, (self.shape.num_heads, self.shape.head_dim))  # [B, T, H, d]
            return (per_head.mul(mask[..., None]).flatten(-2), *rest)

        return hook

    def _neuron_hook(self, layer: int):
        def hook(_module: nn.Module, args: tuple) -> Optional[tuple]:
            if self.neurons[layer] is None:
                return None
            (x, *rest) = args
            batch = self.neurons[layer].shape[0]
            if self.dense_before is not None:
                batch = self.dense_before.shape[0]
            per_example = x.view(batch, -1, x.shape[-1]) if x.dim() == 2 else x  # OPT: [B*T, I]
            mask = self.per_token(self.neurons[layer], per_example)  # [B, T, I]
            return (per_example.mul(mask).view(x.shape), *rest)

        return hook
