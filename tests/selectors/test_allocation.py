"""TEAL's greedy allocation: each step raises one input by a level step, a target is read off at
the first step reaching it, and the first step picks the input whose raise moves the layer's
output least per byte it saves, recomputed here with plain hooks over the whole model."""

import pytest
import torch

from shadow_sweep.cache import StageCache
from shadow_sweep.config import Ranking, SparsityConfig
from shadow_sweep.data.calibration import EncodedExample
from shadow_sweep.models.masks import LinearInputMasks, Slot
from shadow_sweep.selectors.allocation import LEVEL_STEP, greedy_path, slot_weights
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


def test_every_step_raises_one_input_and_targets_are_read_off_at_the_first_step_reaching_them(searched):
    loaded, _, _, path = searched
    weights = slot_weights(LinearSizes.of(loaded.model, loaded.adapter, loaded.shape))
    share = torch.tensor([weights[slot] for slot in path.slots], dtype=torch.float64)
    share = share / share.sum()
    for layer in range(1, loaded.shape.num_layers):
        raised = path.levels[layer, 1:] - path.levels[layer, :-1]  # [steps, slots]
        moving = raised.abs().sum(-1) > 0
        assert ((raised > 0).sum(-1)[moving] == 1).all() and raised.max() <= LEVEL_STEP + 1e-6
        torch.testing.assert_close(path.weighted[layer].double(), (path.levels[layer].double() * share).sum(-1),
                                   rtol=0, atol=1e-5)
        chosen = path.levels_at(0.5)
        weighted = sum(float(chosen[slot][layer]) * float(share[i]) for i, slot in enumerate(path.slots))
        first = int((path.weighted[layer] >= 0.5 - 1e-6).float().argmax())
        assert weighted == pytest.approx(float(path.weighted[layer, first]), abs=1e-5)
        assert weighted >= 0.5 - 1e-6 and path.weighted[layer, first - 1] < 0.5
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
    costs = {}
    for i, slot in enumerate(path.slots):
        threshold = selector.point.statistics.threshold("magnitude", slot, layer, LEVEL_STEP)
        zero = lambda _m, args, t=threshold: (args[0] * (args[0].abs() > t), *args[1:])  # noqa: E731
        error = float((layer_output([(m, zero) for m in linears(loaded, layer)[slot.value]]) - dense).pow(2).sum())
        costs[slot] = error / (LEVEL_STEP * weights[slot] / total)  # error per byte-weighted level saved
    first = path.levels[layer, 1]
    raised = path.slots[int(first.argmax())]
    assert first.max() == pytest.approx(LEVEL_STEP) and raised == min(costs, key=costs.get)
    assert isinstance(raised, Slot)
