"""The K/V cache of the decode path and attention over it.

KV-cache policy: with masks fixed for a sequence (`per_sequence`, the accuracy path's protocol),
the cache is cut after the prompt to the K/V groups the kept heads read, and nothing skipped is
ever needed later. With masks chosen every token, later tokens may keep heads that earlier
tokens skipped, so `LayerCache` then stores K/V of every group (k/v projections stay dense; q,
o and the MLP are sparse): the cost of that policy is the dense k/v projection, reported by the
benchmark. Selections at an input compute every head, and cache every group, from the kept
input channels.
"""

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


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
