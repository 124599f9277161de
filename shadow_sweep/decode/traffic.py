"""The memory floor of batch-1 decode: the bytes one step reads, and the read bandwidth.

A one-token step is a chain of matrix-vector products, so it streams every weight row it
touches once; its floor is bytes / read bandwidth. The bytes of one step (`StepTraffic`):
- weights: per layer what the step computes, from the kept counts it recorded
  (`StepRecord`) by the formula of selectors.traffic, which the accuracy path's rows use too:
  chosen ahead, kept q and o rows (|Q| d each), kept up, gate and down rows (|N| each), k and v
  rows of every K/V group where the cache keeps every group (per_token) else of the kept
  groups; at an input, the kept columns of every linear; at the gate, the gate dense and the
  kept neurons' up and down rows; with their biases;
- fixed: the token's embedding row, every norm, the final norm and lm_head (V x D);
- kv_cache: K and V of the groups the kept query heads read, over the context so far
  (2 x context x groups x d per layer);
- predictor: the predictor network's parameters (all of them run every step that predicts).
Bandwidth (`read_bandwidth`): a read-only probe (a sum over a tensor far larger than the
caches) in the same process and thread count as the timed steps; the median of repeats.
`tensors_read_bandwidth`: the same kind of sum over the dense step's own weight tensors, one
call per tensor: what a bare read of those tensors reaches (no arithmetic but the sum), the
reference that says how much of x_floor any kernel could remove.
"""

import statistics
import time
from dataclasses import dataclass

import torch

from shadow_sweep.decode.weights import LayerWeights
from shadow_sweep.models.adapters import ModelShape
from shadow_sweep.selectors.traffic import LinearSizes

PROBE_BYTES = 512 * 2**20


@dataclass
class StepTraffic:
    weights: int
    fixed: int
    kv_cache: int
    predictor: int

    @property
    def total(self) -> int:
        return self.weights + self.fixed + self.kv_cache + self.predictor


def _nbytes(tensor) -> int:
    return 0 if tensor is None else tensor.numel() * tensor.element_size()


def layer_sizes(w: LayerWeights, shape: ModelShape) -> LinearSizes:
    """The sizes of a layer's dense weights (selectors.traffic's formula)."""
    return LinearSizes(shape.hidden_size, shape.num_heads, shape.num_kv_heads, shape.head_dim, shape.num_neurons,
                       w.gate is not None, w.q.element_size(), w.q_bias is not None, w.k_bias is not None,
                       w.v_bias is not None, w.o_bias is not None, w.up_bias is not None, w.down_bias is not None)


@dataclass
class StepRecord:
    """What one decode step kept, per layer: the kept counts (attention-input channels,
    head-context channels, MLP-input channels, neurons, K/V groups read by the attending
    heads), the plan (its blocks' points), the K/V groups computed."""

    counts: torch.Tensor  # [L, 5]
    plans: list
    groups: list[int]


def read_bandwidth(device: torch.device, repeats: int = 7, size: int = PROBE_BYTES) -> float:
    """Bytes per second of a read-only pass (sum) over `size` bytes of float32, median of repeats."""
    probe = torch.ones(size // 4, device=device)
    times = []
    for _ in range(repeats + 1):  # the first pass warms the allocator and the pages
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        began = time.perf_counter()
        probe.sum().item()
        times.append(time.perf_counter() - began)
    return size / statistics.median(times[1:])


def tensors_read_bandwidth(tensors: list[torch.Tensor], repeats: int = 3) -> float:
    """Bytes per second of one read-only pass (a sum per tensor, in order) over these tensors,
    median of repeats after a warm-up pass."""
    size = sum(_nbytes(t) for t in tensors)
    times = []
    for _ in range(repeats + 1):
        began = time.perf_counter()
        sums = [t.sum() for t in tensors]
        torch.stack(sums).sum().item()  # waits for queued device work
        times.append(time.perf_counter() - began)
    return size / statistics.median(times[1:])
