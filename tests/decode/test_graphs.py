"""The static-shape step that a CUDA graph captures gives the eager decode path's tokens and
logits: on the CPU uncaptured, on CUDA (when present) captured and replayed."""

import pytest
import torch

from shadow_sweep.decode import generate
from shadow_sweep.decode.engine import SparseDecoder
from shadow_sweep.decode.generate import Generator
from shadow_sweep.decode.selection import DecodeSelection
from tests.conftest import load_tiny
from tests.decode.test_decode import STEPS, TOLERANCE, _prompt, static_selection
from tests.selectors.helpers import runtime_for


class UncapturedStep:
    """GraphedStep's contract without the capture: `step_at` run eagerly."""

    def __init__(self, decoder, weights, caches, start):
        self.decoder, self.weights, self.caches = decoder, weights, caches

    def __call__(self, token: int, position: int) -> torch.Tensor:
        device = self.decoder.device
        return self.decoder.step_at(torch.tensor([token], device=device), torch.tensor([position], device=device),
                                    self.weights, self.caches)


def _runs(loaded, update: str, graphs: list[bool]):
    """Static masks at 50% (global ranking) under which the last layer keeps no head at all
    (CUDA's attention kernels fail on zero heads: the decoder must skip them), or dense."""
    s = loaded.shape
    g = torch.Generator().manual_seed(0)
    head_scores = torch.rand(s.num_layers, s.num_heads, generator=g)
    neuron_scores = torch.rand(s.num_layers, s.num_neurons, generator=g)
    head_scores[-1] = 0.0  # the lowest scores of all: dropped first
    decoder = SparseDecoder(loaded)
    runs = []
    for graph in graphs:
        selection = static_selection(loaded, head_scores, neuron_scores, "global") if update != "dense" else None
        runs.append(Generator(decoder, selection, graphs=graph).generate(_prompt(5), STEPS))
    if update != "dense":
        assert runs[0].records[0].counts[-1, 1] == 0 and runs[0].records[0].counts[:-1, 1].all()
    return runs


def _assert_same(reference, other):
    assert other.tokens == reference.tokens
    for expected, logits in zip(reference.logits, other.logits):
        torch.testing.assert_close(logits.cpu(), expected.cpu(), **TOLERANCE)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-opt"])
@pytest.mark.parametrize("update", ["dense", "per_sequence"])
def test_static_shape_step_matches_the_eager_step(name, update, session_cache, monkeypatch):
    monkeypatch.setattr(generate, "GraphedStep", UncapturedStep)
    eager, static = _runs(load_tiny(name, session_cache), update, [False, True])
    _assert_same(eager, static)


def test_per_token_masks_are_not_graphed(session_cache):
    with pytest.raises(ValueError, match="fixed for the sequence"):
        loaded = load_tiny("tiny-llama", session_cache)
        Generator(SparseDecoder(loaded), DecodeSelection(runtime_for(loaded, "teal", rule="top_k")), graphs=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-opt"])
@pytest.mark.parametrize("update", ["dense", "per_sequence"])
def test_cuda_graph_replay_matches_the_cpu_path(name, update, session_cache):
    [cpu] = _runs(load_tiny(name, session_cache), update, [False])
    eager, graphed = _runs(load_tiny(name, session_cache, device="cuda"), update, [False, True])
    _assert_same(cpu, eager)
    _assert_same(cpu, graphed)
    assert graphed.prefill_capture_s > 0
