"""The bytes of a selection equal the analytic count for each point (ahead: kept rows of every
linear of a head or neuron; gate: the gate dense plus kept up and down rows; input: kept columns
of every linear), read here off the modules' own weights; and the accuracy path's bytes of a
fixed selection equal the decode path's for the same kept rows."""

import pytest
import torch

from shadow_sweep.config import MaskUpdate, Ranking, SparsityConfig
from shadow_sweep.decode.engine import SparseDecoder
from shadow_sweep.models.masks import Slot
from shadow_sweep.selectors.accounting import SelectionAccount
from shadow_sweep.selectors.base import Point
from shadow_sweep.selectors.traffic import LinearSizes, fixed_bytes
from shadow_sweep.sparsity.policy import SparsityPolicy
from tests.conftest import load_tiny
from tests.decode.test_traffic import one_step
from tests.selectors.helpers import fitted_for, runtime_of, synthetic_traces


def elements(linear: torch.nn.Linear, rows: int, columns: int) -> int:
    """Weight entries of `rows` output rows x `columns` input columns, and the rows' biases."""
    return rows * columns + (rows if linear.bias is not None else 0)


def layer_modules(loaded, layer: int) -> dict[str, torch.nn.Linear]:
    block = loaded.adapter.decoder_layers(loaded.model)[layer]
    attention = block.self_attn
    if hasattr(block, "mlp"):
        mlp = block.mlp
        return {"q": attention.q_proj, "k": attention.k_proj, "v": attention.v_proj, "o": attention.o_proj,
                "gate": mlp.gate_proj, "up": mlp.up_proj, "down": mlp.down_proj}
    return {"q": attention.q_proj, "k": attention.k_proj, "v": attention.v_proj, "o": attention.out_proj,
            "up": block.fc1, "down": block.fc2}


def expected_layer(loaded, layer: int, attention: Point, mlp: Point, a: int, c: int, m: int, n: int) -> int:
    """The issue's count, linear by linear: a, c, m, n kept entries of the four inputs (heads:
    c = kept heads x d)."""
    s = loaded.shape
    linear = layer_modules(loaded, layer)
    d = s.head_dim
    total = 0
    q_rows = c if attention == Point.ahead else s.num_heads * d
    total += elements(linear["q"], q_rows, a)
    total += elements(linear["k"], s.num_kv_heads * d, a) + elements(linear["v"], s.num_kv_heads * d, a)
    total += elements(linear["o"], s.hidden_size, c)
    gated = "gate" in linear
    if mlp == Point.ahead:
        rows = {"gate": n, "up": n}
    elif mlp == Point.gate:
        rows = {"gate": s.num_neurons, "up": n if gated else s.num_neurons}
    else:
        rows = {"gate": s.num_neurons, "up": s.num_neurons}
    for name in ("gate", "up") if gated else ("up",):
        total += elements(linear[name], rows[name], m)
    total += elements(linear["down"], s.hidden_size, n)
    return total * linear["q"].weight.element_size()


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-opt"])
@pytest.mark.parametrize("attention, mlp", [(Point.ahead, Point.ahead), (Point.ahead, Point.gate),
                                            (Point.input, Point.input), (Point.ahead, Point.input)])
def test_the_bytes_of_a_selection_are_its_kept_rows_and_columns(name, attention, mlp, session_cache):
    loaded = load_tiny(name, session_cache)
    s = loaded.shape
    model = loaded.model
    fixed = fixed_bytes(model, model.get_output_embeddings(), model.get_input_embeddings())
    account = SelectionAccount(LinearSizes.of(model, loaded.adapter, s), s.num_layers, 1, attention, mlp,
                               dense_kv=True, fixed=fixed, predictor=100)
    g = torch.Generator().manual_seed(0)
    tokens = 3
    account.start(torch.ones(1, tokens, dtype=torch.bool))
    widths = {Slot.attention_input: s.hidden_size, Slot.head_context: s.num_heads * s.head_dim,
              Slot.mlp_input: s.hidden_size, Slot.neuron_activation: s.num_neurons}
    kept = {}
    for layer in range(1, s.num_layers):
        for slot, width in widths.items():
            if slot == Slot.head_context and attention == Point.ahead:  # whole heads
                heads = (torch.rand(1, tokens, s.num_heads, generator=g) > 0.5).float()
                mask = heads.repeat_interleave(s.head_dim, -1)
            elif slot in (Slot.attention_input, Slot.mlp_input) and (attention, mlp)[slot == Slot.mlp_input] \
                    == Point.ahead:
                continue  # an ahead block reads its whole input
            else:
                mask = (torch.rand(1, tokens, width, generator=g) > 0.4).float()
            account.record(slot, layer, mask)
            kept[layer, slot] = mask[0].sum(-1)
    account.finish()
    per_token = []
    for t in range(tokens):
        total = fixed + 100 + expected_layer(loaded, 0, Point.ahead, Point.ahead, s.hidden_size, widths[
            Slot.head_context], s.hidden_size, s.num_neurons)
        for layer in range(1, s.num_layers):
            count = {slot: int(kept[layer, slot][t]) if (layer, slot) in kept else width
                     for slot, width in widths.items()}
            total += expected_layer(loaded, layer, attention, mlp, count[Slot.attention_input],
                                    count[Slot.head_context], count[Slot.mlp_input], count[Slot.neuron_activation])
        per_token.append(total)
    row = account.summary()
    assert row["bytes_per_token"] == pytest.approx(sum(per_token) / tokens)
    dense = fixed + s.num_layers * expected_layer(loaded, 0, Point.ahead, Point.ahead, s.hidden_size,
                                                  widths[Slot.head_context], s.hidden_size, s.num_neurons)
    assert row["dense_bytes_per_token"] == dense
    assert row["bytes_fraction"] == pytest.approx(row["bytes_per_token"] / dense)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-opt"])
def test_a_fixed_selection_reads_on_the_accuracy_path_what_the_decode_path_reads(name, session_cache):
    """A static mask: the accuracy path's weight bytes per token equal the decode step's
    projection bytes for the same kept heads and neurons (K/V kept for the kept groups)."""
    loaded = load_tiny(name, session_cache)
    s = loaded.shape
    policy = SparsityPolicy(SparsityConfig(level=0.5, ranking=Ranking.per_layer, update=MaskUpdate.per_sequence), s)
    fitted = fitted_for("static", s, synthetic_traces(s, 8))
    runtime = runtime_of(loaded, fitted, policy, MaskUpdate.per_sequence)
    with runtime, torch.no_grad():
        loaded.model(input_ids=torch.randint(3, 300, (2, 9)))
        heads, neurons = runtime.masks.stacked()
    decoder = SparseDecoder(loaded)
    sliced = [decoder.sliced(layer, heads[0, layer].nonzero().squeeze(1), neurons[0, layer].nonzero().squeeze(1))
              for layer in range(s.num_layers)]
    traffic = decoder.step_traffic(one_step(decoder, sliced, False, 10), 10, predictor_bytes=0)
    row = runtime.account.summary()
    assert row["weight_bytes_per_token"] == traffic.weights
    assert row["fixed_bytes_per_token"] == traffic.fixed
