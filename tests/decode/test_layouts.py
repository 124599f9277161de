"""The decode path's own pieces: the weight layouts of the gate and input points equal the model's
weights; selectors registered from a test module decode without other code changes; the C++
kernels are built once however many prompts, levels and selectors run."""

import pytest
import torch

from shadow_sweep.config import BenchKernel, MaskUpdate, Prefill, SparsityConfig
from shadow_sweep.decode import fused
from shadow_sweep.decode.engine import SparseDecoder
from shadow_sweep.decode.fused import gather_kernels
from shadow_sweep.decode.generate import Generator
from shadow_sweep.decode.selection import DecodeSelection
from shadow_sweep.decode.weights import GateLayout, InputLayout
from shadow_sweep.models.masks import Slot
from shadow_sweep.selectors.base import ALL_UPDATES, Block, Point, PointContext, Reads, Selector, SelectorSpec
from shadow_sweep.selectors.registry import SELECTORS, selection_of
from shadow_sweep.selectors.rules import ChannelRule
from shadow_sweep.selectors.runtime import SelectionRuntime
from shadow_sweep.sparsity.policy import SparsityPolicy
from tests.conftest import load_tiny
from tests.decode.test_decode import STEPS, TOLERANCE, _prompt, masked_path
from tests.selectors.helpers import runtime_for


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-opt"])
def test_the_layouts_of_the_gate_and_input_points_equal_the_weights(name, session_cache):
    loaded = load_tiny(name, session_cache)
    layer = loaded.adapter.decoder_layers(loaded.model)[1]
    decoder = SparseDecoder(loaded)
    inputs = decoder.layout(Point.input, 1)
    gate = decoder.layout(Point.gate, 1)
    assert isinstance(inputs, InputLayout) and isinstance(gate, GateLayout)
    attention = layer.self_attn
    q, k, v = (m.weight for m in (attention.q_proj, attention.k_proj, attention.v_proj))
    assert torch.equal(inputs.qkv_t, torch.cat([q, k, v]).t())
    if name == "tiny-llama":
        mlp = layer.mlp
        assert torch.equal(inputs.gate_up_t, torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).t())
        assert torch.equal(inputs.down_t, mlp.down_proj.weight.t())
        assert torch.equal(gate.gate, mlp.gate_proj.weight)
        assert torch.equal(gate.rest, torch.stack([mlp.up_proj.weight, mlp.down_proj.weight.t()], 1))
    else:
        assert torch.equal(inputs.gate_up_t, layer.fc1.weight.t())
        assert torch.equal(inputs.down_t, layer.fc2.weight.t())
        assert torch.equal(gate.gate, layer.fc1.weight)
        assert torch.equal(gate.rest, layer.fc2.weight.t()[:, None])
    assert all(t.is_contiguous() for t in (*vars(inputs).values(), *vars(gate).values()))
    assert decoder.layout(Point.input, 1) is inputs  # made once
    per_layer = sum(t.numel() * 4 for t in (*vars(inputs).values(), *vars(gate).values()))
    assert decoder.layout_bytes() == per_layer


class HalfGate(Selector):
    """At the gate: each token's half of the neurons with the largest |act(gate)|."""

    spec = SelectorSpec(name="half_gate", blocks=(Block.mlp,), point=Point.gate, updates=(MaskUpdate.per_token,),
                        decode=True, source="a test")

    def __init__(self, point: PointContext, blocks, fitted=None):
        super().__init__(point, blocks, fitted)
        self.rule = ChannelRule(keep=self.shape.num_neurons // 2)
        self.activations = [act for _, act in point.loaded.adapter.gate_modules(point.loaded.model)]

    def reads(self) -> dict[Reads, range]:
        return {Reads.gate_output: range(1, self.shape.num_layers)}

    def read(self, where: Reads, layer: int, gate: torch.Tensor) -> None:
        self.set_slot(Slot.neuron_activation, layer, self.rule.mask(self.activations[layer](gate)))

    def step_rules(self) -> dict[Reads, list]:
        return {Reads.gate_output: [None] + [self.rule] * (self.shape.num_layers - 1)}


class SignHeads(Selector):
    """Ahead, from the layer input: the even heads where its first entry is positive, else the
    odd ones (decoded through the default reads: the forward's `read`, masks to kept units)."""

    spec = SelectorSpec(name="sign_heads", blocks=(Block.attention,), point=Point.ahead, updates=ALL_UPDATES,
                        decode=True, source="a test")

    def reads(self) -> dict[Reads, range]:
        return {Reads.layer_input: range(1, self.shape.num_layers)}

    def read(self, where: Reads, layer: int, x: torch.Tensor) -> None:
        odd = (x[..., :1] <= 0).long()  # [B, T, 1]
        heads = (torch.arange(self.shape.num_heads) % 2 == odd).float()
        self.set_layer(layer, heads, None)


def test_selectors_registered_from_a_test_module_decode_as_the_masked_path(session_cache, embedded_cache,
                                                                           monkeypatch):
    monkeypatch.setitem(SELECTORS, "half_gate", HalfGate)
    monkeypatch.setitem(SELECTORS, "sign_heads", SignHeads)
    loaded = load_tiny("tiny-llama", session_cache)
    policy = SparsityPolicy(SparsityConfig(level=0.5), loaded.shape)
    make = lambda: SelectionRuntime(loaded, selection_of("half_gate", heads="sign_heads"), policy)  # noqa: E731
    kernels = gather_kernels(BenchKernel.fused_layer, loaded.device, torch.float32, embedded_cache.root)
    run = Generator(SparseDecoder(loaded, kernels), DecodeSelection(make())).generate(_prompt(7), STEPS)
    expected, counts = masked_path(loaded, make(), _prompt(7), run.tokens, Prefill.sparse)
    for ours, theirs in zip(run.logits, expected):
        torch.testing.assert_close(ours, theirs, **TOLERANCE)
    decoded = torch.stack([record.counts[:, :4] for record in run.records])
    assert torch.equal(decoded, counts[len(_prompt(7)):len(_prompt(7)) + STEPS - 1])
    assert (decoded[:, 1:, 1] == 2 * loaded.shape.head_dim).all()  # two of four heads
    assert (decoded[:, 1:, 3] == loaded.shape.num_neurons // 2).all()


def test_the_cpp_kernels_are_built_once_across_prompts_levels_and_selectors(session_cache, embedded_cache):
    loaded = load_tiny("tiny-llama", session_cache)
    kernels = gather_kernels(BenchKernel.fused_layer, loaded.device, torch.float32, embedded_cache.root)
    builds = fused.cpp_kernels.cache_info().misses
    for level, name, length in ((0.3, "teal", 6), (0.5, "cats", 9), (0.7, "shadowllm", 12)):
        again = gather_kernels(BenchKernel.fused_layer, loaded.device, torch.float32, embedded_cache.root)
        assert again.module is kernels.module
        selection = DecodeSelection(runtime_for(loaded, name, level=level, rule="top_k"))
        Generator(SparseDecoder(loaded, again), selection).generate(_prompt(1, length), 3)
    assert fused.cpp_kernels.cache_info().misses == builds
