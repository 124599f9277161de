"""`dejavu_mlp`: DejaVu's neuron predictor on the MLP's own input (after attention and its norm),
one network per layer l >= 1: the latest state before the MLP's computation, where DejaVu's
authors place it too. Neurons only; pair it with a head selector (`predictor=dejavu
predictor.neurons=dejavu_mlp`: DejaVu with its MLP predictors on the MLP input)."""

from shadow_sweep.predictors.layouts import NetworkLayout
from shadow_sweep.selectors.base import ALL_UPDATES, Block, Point, Reads, SelectorSpec
from shadow_sweep.selectors.dejavu import DejaVuSelector


class DejaVuMLPSelector(DejaVuSelector):
    spec = SelectorSpec(name="dejavu_mlp", blocks=(Block.mlp,), point=Point.ahead, updates=ALL_UPDATES,
                        network=NetworkLayout(width_cap=1000, one_network=False, input_field="mlp_input",
                                              heads=False),
                        needs_dense_first_layer=True, decode=True,
                        adds="one predictor network per layer, before the MLP",
                        source="Liu et al., Deja Vu, ICML 2023 (its MLP predictor's input)")
    reads_at = Reads.mlp_input
