"""TEAL's greedy allocation: each step adds the same byte-weighted level, a target is read off at
the first step reaching it, and the first step picks the input whose raise moves the layer's
output least, recomputed here with plain hooks over the whole model."""

import pytest
import torch

from shadow_sweep.cache import StageCache
from shadow_sweep.config import Ranking, SparsityConfig
from shadow_sweep.data.calibration import EncodedExample
from shadow_sweep.models.masks import LinearInputMasks, Slot
from shadow_sweep.selectors.allocation import STEP, greedy_path, slot_weights
from shadow_sweep.selectors.base import PointContext
from shadow_sweep.selectors.teal import TealSelector
from shadow_sweep.selectors.traffic import LinearSizes
from shadow_sweep.sparsity.policy import SparsityPolicy
from tests.conftest import load_tiny
from tests.selectors.helpers import tiny_statistics
from tests.selectors.test_selectors import linears


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    loaded = load_tiny("tiny-llama", StageCache(tmp_path_factory.mktemp("cache")))
    statistics = tiny_statistics(loaded, sequences=32, length=32)
    policy = SparsityPolicy(SparsityConfig(level=0.5, ranking=Ranking.per_layer), loaded.shape)
    masks = LinearInputMasks(loaded.model, loaded.adapter, loaded.shape)
    point = PointContext(loaded, policy, policy.cfg.update, masks, statistics=statistics)
    selector = TealSelector(point, TealSelector.spec.blocks)
    g = torch.Generator().manual_seed(21)
    encoded = [EncodedExample(torch.randint(3, 300, (32,), generator=g).tolist(), 1) for _ in range(6)]
    return loaded, selector, encoded, greedy_path(selector, encoded, progress=False)


def test_every_step_adds_the_same_byte_weighted_level_and_targets_are_read_off(searched):
    loaded, _, _, path = searched
    weights = slot_weights(LinearSizes.of(loaded.model, loaded.adapter, loaded.shape))
    total = sum(weights.values())
    steps = path.weighted.shape[1]
    for layer in range(1, loaded.shape.num_layers):
        expected = torch.arange(steps) * STEP
        torch.testing.assert_close(path.weighted[layer, :20], expected[:20], rtol=0, atol=1e-5)  # before any cap
        chosen = path.levels_at(0.5)
        weighted = sum(float(chosen[slot][layer]) * weights[slot] for slot in path.slots) / total
        assert weighted == pytest.approx(0.5, abs=1e-5)
    assert (path.weighted[0] == 0).all()  # layer 0 is kept dense: not searched
    uneven = path.levels_at(0.5)
    assert len({round(float(uneven[slot][1]), 3) for slot in path.slots}) > 1  # not the uniform allocation


def test_the_first_step_raises_the_input_that_moves_the_layer_output_least(searched):
    loaded, selector, encoded, path = searched
    layer = 1
    ids = torch.tensor([e.input_ids for e in encoded])
    block = loaded.adapter.decoder_layers(loaded.model)[layer]
    weights = slot_weights(LinearSizes.of(loaded.model, loaded.adapter, loaded.shape))
    total = sum(weights.values())

    def layer_output(hooks):
        captured = []
        handles = [m.register_forward_pre_hook(fn) for m, fn in hooks]
        handles.append(block.register_forward_hook(lambda _m, _a, out: captured.append(out)))
        try:
            with torch.no_grad():
                loaded.model(input_ids=ids)
        finally:
            for handle in handles:
                handle.remove()
        out = captured[0]
        return out[0] if isinstance(out, tuple) else out

    dense = layer_output([])
    errors = {}
    for slot in path.slots:
        level = STEP * total / weights[slot]
        threshold = selector.point.statistics.threshold("magnitude", slot, layer, level)
        zero = lambda _m, args, t=threshold: (args[0] * (args[0].abs() > t), *args[1:])  # noqa: E731
        errors[slot] = float((layer_output([(m, zero) for m in linears(loaded, layer)[slot.value]]) - dense)
                             .pow(2).sum())
    first = path.levels[layer, 1]
    raised = path.slots[int(first.argmax())]
    assert raised == min(errors, key=errors.get)
    assert isinstance(raised, Slot)
