"""Masks on the inputs of a decoder layer's linears, per example or per token, applied with
forward pre-hooks.

Four slots per layer l, each the input of one or more linears:
- `attention_input` [B, T, D]: read by q, k and v (one mask for the three);
- `head_context` [B, T, H*d]: read by the output projection; a mask of width H is a head mask
  (each head's d columns together), a mask of width H*d masks single channels;
- `mlp_input` [B, T, D]: read by gate and up (or OPT's fc1);
- `neuron_activation` [B, T, I]: read by the down projection (OPT flattens the MLP's inputs to
  [B*T, .], batch-major; they are viewed back per example).
A layer's mask is [B, U] (one mask per example, broadcast over T) or [B, T, U] (one per token);
a mask of batch 1 broadcasts over the batch. Tokens marked in `dense_tokens` [B, T] stay
unmasked (a dense prompt, an attention sink). Before a slot's mask is applied, the `readers`
registered for that slot and layer see its unmasked input (selectors that choose at that
input); `on_applied` sees every applied mask (the realised kept fractions). Removing the hooks
restores the model exactly: weights are never touched.
"""

import weakref
from enum import Enum
from typing import Callable, Optional

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from shadow_sweep.models.adapters import ArchitectureAdapter, ModelShape


class Slot(str, Enum):
    attention_input = "attention_input"
    head_context = "head_context"
    mlp_input = "mlp_input"
    neuron_activation = "neuron_activation"


Reader = Callable[[int, torch.Tensor], None]  # (layer, the slot's input [B, T, U]) -> None


class LinearInputMasks:
    """Context manager installing the slot hooks on a model; see the module docstring."""

    def __init__(self, model: nn.Module, adapter: ArchitectureAdapter, shape: ModelShape):
        self.model = model
        self.adapter = adapter
        self.shape = shape
        self.slots: dict[Slot, list[Optional[torch.Tensor]]] = {slot: [None] * shape.num_layers for slot in Slot}
        self.dense_tokens: Optional[torch.Tensor] = None  # [B, T] bool
        self.readers: dict[tuple[Slot, int], list[Reader]] = {}
        self.on_applied: Optional[Callable[[Slot, int, torch.Tensor], None]] = None
        self.active = True  # False: hooks pass inputs through untouched (and read nothing)
        self._last: dict[tuple[Slot, int], tuple] = {}  # (input weakref, applied mask) per slot and layer
        self._handles: list[RemovableHandle] = []

    @property
    def heads(self) -> list[Optional[torch.Tensor]]:
        return self.slots[Slot.head_context]

    @property
    def neurons(self) -> list[Optional[torch.Tensor]]:
        return self.slots[Slot.neuron_activation]

    def width(self, slot: Slot) -> int:
        s = self.shape
        return {Slot.attention_input: s.hidden_size, Slot.head_context: s.num_heads * s.head_dim,
                Slot.mlp_input: s.hidden_size, Slot.neuron_activation: s.num_neurons}[slot]

    def set(self, heads: Optional[torch.Tensor] = None, neurons: Optional[torch.Tensor] = None) -> None:
        """Every layer's masks from heads [B, L, H] and neurons [B, L, I] (None = unmasked)."""
        if heads is not None:
            self._check(heads, self.shape.num_heads, "heads")
            self.slots[Slot.head_context] = list(heads.unbind(1))
        if neurons is not None:
            self._check(neurons, self.shape.num_neurons, "neurons")
            self.slots[Slot.neuron_activation] = list(neurons.unbind(1))

    def set_layer(self, layer: int, heads: Optional[torch.Tensor], neurons: Optional[torch.Tensor]) -> None:
        """Layer `layer`'s head and neuron masks: [B, H] and [B, I], or per token [B, T, .]."""
        if heads is not None:
            self.slots[Slot.head_context][layer] = heads
        if neurons is not None:
            self.slots[Slot.neuron_activation][layer] = neurons

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every layer's masks as heads [B, L, H] and neurons [B, L, I], or [B, T, L, U] when some
        layer's mask is per token (unset layers, and a kind without masks, as ones); for
        inspection and tests."""
        known = [m for m in self.heads + self.neurons if m is not None]
        if not known:
            raise ValueError("no mask is set")
        lead = max((m.shape[:-1] for m in known), key=len)

        def stack(masks: list[Optional[torch.Tensor]], width: int) -> torch.Tensor:
            ones = known[0].new_ones(*lead, width)
            return torch.stack([ones if m is None else m.expand(*lead, width) if m.dim() == len(lead) + 1
                                else m[:, None].expand(*lead, width) for m in masks], len(lead))

        return stack(self.heads, self.shape.num_heads), stack(self.neurons, self.shape.num_neurons)

    def clear(self) -> None:
        self.slots = {slot: [None] * self.shape.num_layers for slot in Slot}
        self.dense_tokens = None
        self._last.clear()

    def _check(self, mask: torch.Tensor, width: int, kind: str) -> None:
        expected = (self.shape.num_layers, width)
        if mask.dim() != 3 or tuple(mask.shape[1:]) != expected:
            raise ValueError(f"{kind} mask must have shape [B, {expected[0]}, {expected[1]}], "
                             f"got {list(mask.shape)}")

    def __enter__(self) -> "LinearInputMasks":
        if self._handles:
            raise RuntimeError("mask hooks are already installed")
        model, adapter = self.model, self.adapter
        modules = {Slot.attention_input: adapter.attention_input_modules(model),
                   Slot.head_context: [[m] for m in adapter.head_context_modules(model)],
                   Slot.mlp_input: adapter.mlp_input_modules(model),
                   Slot.neuron_activation: [[m] for m in adapter.neuron_activation_modules(model)]}
        for slot, per_layer in modules.items():
            for layer, linears in enumerate(per_layer):
                for module in linears:
                    self._handles.append(module.register_forward_pre_hook(self._hook(slot, layer)))
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()

    def per_token(self, mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """A layer's mask as [B or 1, T or 1, U] in x's dtype, the dense tokens applied."""
        mask = mask.to(dtype=x.dtype, device=x.device)
        mask = mask[:, None] if mask.dim() == 2 else mask
        if self.dense_tokens is None:
            return mask
        dense = self.dense_tokens.to(x.device)[..., None]
        return torch.where(dense, torch.ones((), dtype=x.dtype, device=x.device), mask)

    def expanded(self, slot: Slot, mask: torch.Tensor) -> torch.Tensor:
        """A head mask [.., H] -> its channels [.., H*d]; other masks unchanged."""
        if slot == Slot.head_context and mask.shape[-1] == self.shape.num_heads:
            return mask.repeat_interleave(self.shape.head_dim, dim=-1)
        return mask

    def _batch(self, layer_masks: Optional[torch.Tensor]) -> Optional[int]:
        """The batch size to view a flattened [B*T, U] input back by."""
        if self.dense_tokens is not None:
            return self.dense_tokens.shape[0]
        return None if layer_masks is None else layer_masks.shape[0]

    def _hook(self, slot: Slot, layer: int):
        def hook(_module: nn.Module, args: tuple) -> Optional[tuple]:
            if not self.active:
                return None
            (x, *rest) = args
            per_example = x
            if x.dim() == 2:  # OPT's flattened MLP input [B*T, U]
                batch = self._batch(self.slots[slot][layer])
                if batch is None:
                    return None
                per_example = x.view(batch, -1, x.shape[-1])
            key = (slot, layer)
            last = self._last.get(key)
            if last is not None and last[0]() is x:  # q/k/v (or gate/up) of one input: read and mask once
                applied = last[1]
            else:
                applied = self._read_and_mask(slot, layer, per_example)
                self._last[key] = (weakref.ref(x), applied)
            if applied is None:
                return None
            return (per_example.mul(applied).view(x.shape), *rest)

        return hook

    def _read_and_mask(self, slot: Slot, layer: int, x: torch.Tensor) -> Optional[torch.Tensor]:
        """Run the slot's readers on its input x [B, T, U], then the mask to apply [B|1, T|1, U]."""
        for read in self.readers.get((slot, layer), ()):
            read(layer, x)
        mask = self.slots[slot][layer]
        if mask is None:
            return None
        applied = self.per_token(self.expanded(slot, mask), x)
        if self.on_applied is not None:
            self.on_applied(slot, layer, applied)
        return applied
