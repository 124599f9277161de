"""The memory floor of batch-1 decode: the bytes one step reads, and the read bandwidth.

A one-token step is a chain of matrix-vector products, so it streams every weight row it
touches once; its floor is bytes / read bandwidth. The bytes of one step (`StepTraffic`):
- weights: per layer the rows the step computes: kept q and o rows (|Q| d each), kept up,
  gate and down rows (|N| each), k and v rows of every K/V group where the cache keeps every
  group (per_token) else of the kept groups, with their biases; a row is D elements;
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

from shadow_sweep.decode.weights import IndexedLayer, LayerWeights

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


def _rows(tensor, rows: int) -> int:
    """Bytes of `rows` rows of a row-major weight or entries of a bias."""
    return 0 if tensor is None else rows * (tensor[0].numel() if tensor.dim() > 1 else 1) * tensor.element_size()


def layer_weight_bytes(w: LayerWeights | IndexedLayer, dense_kv: LayerWeights | None) -> int:
    """Projection bytes one step of this layer reads; `dense_kv`: the dense weights whose k/v
    rows every step computes (per_token), else `w`'s own k/v."""
    if isinstance(w, IndexedLayer):
        full = w.dense
        heads = len(w.q_rows)
        neurons = len(w.neuron_rows)
        kept = (_rows(full.q, heads) + _rows(full.q_bias, heads) + _rows(full.o, heads)
                + sum(_rows(t, neurons) for t in (full.up, full.gate, full.down, full.up_bias))
                + _nbytes(full.o_bias) + _nbytes(full.down_bias))
        kv = dense_kv or full
    else:
        kept = sum(_nbytes(t) for t in (w.q, w.q_bias, w.o, w.o_bias, w.up, w.up_bias, w.gate, w.down, w.down_bias))
        kv = dense_kv or w
    return kept + sum(_nbytes(t) for t in (kv.k, kv.k_bias, kv.v, kv.v_bias))


def fixed_bytes(model: torch.nn.Module, lm_head: torch.nn.Module, embedding: torch.nn.Embedding) -> int:
    """One embedding row, every norm's parameters, and lm_head."""
    norms = sum(_nbytes(p) for m in model.modules() if "norm" in type(m).__name__.lower()
                for p in m.parameters(recurse=False))
    return _rows(embedding.weight, 1) + norms + sum(_nbytes(p) for p in lm_head.parameters())


def kv_read_bytes(query_heads: torch.Tensor, queries_per_kv: int, head_dim: int, context: int,
                  element_size: int) -> int:
    """K and V of the groups these query heads read, over `context` positions."""
    groups = len(torch.unique(query_heads // queries_per_kv))
    return 2 * context * groups * head_dim * element_size


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
