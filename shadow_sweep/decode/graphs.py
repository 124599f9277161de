"""CUDA graphs for one-token decode steps whose weights are fixed for the sequence (our dense
path, `per_sequence` and `static` masks).

At batch 1 a small model's step is launch-bound on a GPU: some 20 kernels per layer, each
costing more in Python and launch overhead than in arithmetic. The step is captured once per
sequence, after the prompt (when the kept rows are known and gathered), and replayed for
every new token. It has static shapes (`SparseDecoder.step_at`): K/V written at a position
tensor into the preallocated cache, attention over the whole cache with the unwritten slots
masked. `per_token` masks are not graphed: with global ranking the kept counts per layer
change from token to token, and so would the shapes.
"""

import torch

from shadow_sweep.decode.cache import LayerCache
from shadow_sweep.decode.engine import SparseDecoder
from shadow_sweep.decode.weights import LayerWeights


class GraphedStep:
    """token, position -> logits [V] by replaying a captured `step_at`."""

    def __init__(self, decoder: SparseDecoder, weights: list[LayerWeights], caches: list[LayerCache], start: int,
                 warmup: int = 2):
        """`start`: the first position to decode. Warm-up and capture write K/V into that slot
        only, which the first real step overwrites."""
        if decoder.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the model on a CUDA device, not {decoder.device}")
        self.token = torch.zeros(1, dtype=torch.long, device=decoder.device)
        self.position = torch.full((1,), start, dtype=torch.long, device=decoder.device)
        step = lambda: decoder.step_at(self.token, self.position, weights, caches)  # noqa: E731
        side = torch.cuda.Stream(decoder.device)
        side.wait_stream(torch.cuda.current_stream(decoder.device))
        with torch.no_grad(), torch.cuda.stream(side):  # cuBLAS/attention workspaces before capture
            for _ in range(warmup):
                step()
        torch.cuda.current_stream(decoder.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph):
            self.logits = step()

    def __call__(self, token: int, position: int) -> torch.Tensor:
        self.token.fill_(token)
        self.position.fill_(position)
        self.graph.replay()
        return self.logits
