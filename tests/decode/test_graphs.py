"""The static-shape step that a CUDA graph captures gives the eager decode path's tokens and
logits: on the CPU uncaptured, on CUDA (when present) captured and replayed."""

import pytest
import torch

from shadow_sweep.config import Ranking, SparsityConfig
from shadow_sweep.decode import generate
from shadow_sweep.decode.engine import SparseDecoder
from shadow_sweep.decode.generate import Generator
from shadow_sweep.sparsity.policy import SparsityPolicy
from tests.conftest import load_tiny
from tests.decode.test_decode import STEPS, TOLERANCE, _prompt, _static
from tests.selectors.helpers import mask_predictor


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
    s, g = loaded.shape, torch.Generator().manual_seed(0)
    policy = SparsityPolicy(SparsityConfig(level=0.5, ranking=Ranking["global"]), s)
    head_scores, neuron_scores = torch.rand(s.num_layers, s.num_heads, generator=g), torch.rand(s.num_layers,
                                                                                                s.num_neurons, generator=g)
    head_scores[-1] = 0.0  # the lowest scores of all: dropped first
    masks = mask_predictor(_static(loaded, head_scores, neuron_scores), policy, loaded.device)
    assert not masks.static[0][0, -1].any() and masks.static[0][0, :-1].any()
    masks = masks if update != "dense" else None
    decoder = SparseDecoder(loaded)
    return [Generator(decoder, masks, update, graphs=graph).generate(_prompt(5), STEPS) for graph in graphs]


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
        Generator(SparseDecoder(load_tiny("tiny-llama", session_cache)), None, "per_token", graphs=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-opt"])
@pytest.mark.parametrize("update", ["dense", "per_sequence"])
def test_cuda_graph_replay_matches_the_cpu_path(name, update, session_cache):
    [cpu] = _runs(load_tiny(name, session_cache), update, [False])
    eager, graphed = _runs(load_tiny(name, session_cache, device="cuda"), update, [False, True])
    _assert_same(cpu, eager)
    _assert_same(cpu, graphed)
    assert graphed.prefill_capture_s > 0
