"""`dense`: no selection: every head, neuron and channel kept."""

from shadow_sweep.selectors.base import ALL_UPDATES, Block, Point, Selector, SelectorSpec


class DenseSelector(Selector):
    spec = SelectorSpec(name="dense", blocks=(Block.attention, Block.mlp), point=Point.ahead, updates=ALL_UPDATES,
                        decode=True, source="the unmasked model")
