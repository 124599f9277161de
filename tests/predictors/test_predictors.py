"""Predictors: learning a known relation, quality metrics, per-sequence masks inside the
forward, checkpoints."""

import pytest
import torch
from scipy.stats import spearmanr

from shadow_sweep.config import ConfigError, CriterionConfig, MaskUpdate, PredictorConfig, SparsityConfig
from shadow_sweep.criteria.registry import get_criterion
from shadow_sweep.models.adapters import ModelShape
from shadow_sweep.predictors.fit import predictor_quality, validation_targets
from shadow_sweep.predictors.quality import spearman, top_k_recall
from shadow_sweep.predictors.store import load_predictor, save_predictor
from shadow_sweep.selectors.registry import SELECTORS, selection_of, spec
from shadow_sweep.selectors.runtime import SelectionRuntime
from shadow_sweep.sparsity.policy import SparsityPolicy
from tests.conftest import load_tiny
from tests.selectors.helpers import fitted_for, synthetic_traces


PER_SEQUENCE = MaskUpdate.per_sequence
SHAPE = ModelShape(num_layers=4, num_heads=8, num_kv_heads=2, head_dim=4, num_neurons=24, hidden_size=32)


def quality_of(name: str, fitted, traces, cfg: PredictorConfig, keep_heads: int, keep_neurons: int) -> dict:
    targets = validation_targets(traces, cfg)
    predicted = SELECTORS[name].quality_predictions(fitted, targets, traces, cfg, SHAPE)
    return predictor_quality(predicted, targets, keep_heads, keep_neurons)


def test_shadowllm_learns_a_known_relation():
    traces = synthetic_traces(SHAPE, 600)
    cfg = PredictorConfig(name="shadowllm", width=128, bottleneck=0, epochs=150, lr=3e-3)
    fitted = fitted_for("shadowllm", SHAPE, traces, width=128, bottleneck=0, epochs=150, lr=3e-3)
    quality = quality_of("shadowllm", fitted, traces, cfg, keep_heads=2, keep_neurons=12)
    assert quality["heads_spearman_mean"] > 0.95 and quality["neurons_spearman_mean"] > 0.95
    assert quality["neurons_recall_mean"] > 0.85
    assert fitted.metrics["validation_examples"] == 120


def test_random_and_static_baselines_score_as_expected():
    traces = synthetic_traces(SHAPE, 300)
    cfg = PredictorConfig(name="random")
    random = quality_of("random", fitted_for("random", SHAPE, traces), traces, cfg, 2, 12)
    assert abs(random["neurons_spearman_mean"]) < 0.1
    static = quality_of("static", fitted_for("static", SHAPE, traces), traces, cfg, 2, 12)
    assert static["neurons_spearman_mean"] > random["neurons_spearman_mean"]


def test_spearman_and_recall_match_independent_computations():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(5, 3, 40, generator=g), torch.rand(5, 3, 40, generator=g)
    expected = torch.tensor([[spearmanr(a[i, l], b[i, l]).statistic for l in range(3)] for i in range(5)]).mean(0)
    torch.testing.assert_close(spearman(a, b), expected.double(), rtol=1e-9, atol=1e-9)
    target = torch.tensor([[[4.0, 3.0, 2.0, 1.0]]])
    assert top_k_recall(torch.tensor([[[4.0, 1.0, 3.0, 2.0]]]), target, 2).item() == 0.5
    assert top_k_recall(target, target, 2).item() == 1.0


def test_default_widths_follow_the_rule_and_costs_add_up():
    shadowllm, dejavu_layout = spec("shadowllm").network, spec("dejavu").network
    assert shadowllm.default_width(576) == 256 and shadowllm.default_width(5120) == 2048
    assert dejavu_layout.default_width(5120) == 1000
    smol = ModelShape(30, 9, 3, 64, 1536, 576)
    shape = shadowllm.mlp_shape(PredictorConfig(name="shadowllm"), smol)
    assert shape.outputs == 29 * (9 + 1536) == 44805
    assert shape.macs_per_group == 576 * 256 + 256 * 64 + 64 * 44805
    dejavu = dejavu_layout.mlp_shape(PredictorConfig(name="dejavu", width=1000, bottleneck=0), smol)
    assert dejavu.groups * dejavu.macs_per_group == 29 * (576 * 1000 + 1000 * 1545)
    neurons_only = spec("dejavu_mlp").network.mlp_shape(PredictorConfig(name="dejavu_mlp"), smol)
    assert neurons_only.outputs == 1536 and neurons_only.inputs == 576


@pytest.fixture(params=["tiny-llama", "tiny-opt"])
def trained(request, session_cache):
    loaded = load_tiny(request.param, session_cache)
    return loaded, synthetic_traces(loaded.shape, 64)


def _fitted(loaded, traces, kind):
    return fitted_for(kind, loaded.shape, traces)


def per_sequence(loaded, fitted, kind: str, policy: SparsityPolicy, **options) -> SelectionRuntime:
    return SelectionRuntime(loaded, selection_of(kind), policy, {kind: fitted}, PER_SEQUENCE, **options)


def _inputs(loaded, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 300, (3, 12), generator=g)
    attention = torch.ones_like(ids)
    attention[1, 9:] = 0  # right padding
    attention[2, :4] = 0  # left padding
    return ids, attention


@pytest.mark.parametrize("kind, calls", [("shadowllm", 1), ("dejavu", 2)])
def test_network_runs_once_per_forward_or_once_per_layer(trained, kind, calls):
    loaded, traces = trained
    policy = SparsityPolicy(SparsityConfig(level=0.5), loaded.shape)
    ids, attention = _inputs(loaded)
    with per_sequence(loaded, _fitted(loaded, traces, kind), kind, policy) as runtime:
        with torch.no_grad():
            loaded.model(input_ids=ids, attention_mask=attention)
        assert runtime.network_calls == calls  # dejavu: layers 1 and 2 of 3
        heads, neurons = runtime.masks.stacked()
    assert heads.shape == (3, 3, loaded.shape.num_heads)
    assert not torch.equal(neurons[0], neurons[1]) and not torch.equal(neurons[0], neurons[2])
    assert (heads[:, 0] == 1).all() and (neurons[:, 0] == 1).all()  # layer 0 stays dense


@pytest.mark.parametrize("kind", [name for name, cls in SELECTORS.items() if MaskUpdate.per_sequence in cls.spec.updates])
def test_masks_of_a_padded_batch_equal_each_row_alone(trained, kind):
    """Left- and right-padded rows get the masks they get alone; right-padded and unpadded
    rows also the logits (left padding shifts Llama's positions, masks aside)."""
    loaded, traces = trained
    policy = SparsityPolicy(SparsityConfig(level=0.5), loaded.shape)
    ids, attention = _inputs(loaded)
    oracle = (get_criterion("plainact"), CriterionConfig())
    with per_sequence(loaded, _fitted(loaded, traces, kind), kind, policy, criterion=oracle) as runtime, torch.no_grad():
        batched = loaded.model(input_ids=ids, attention_mask=attention).logits
        if kind in ("random", "dense"):
            return  # random scores hash positions, which left padding shifts; dense sets none
        batched_masks = runtime.masks.stacked()
        for row in range(3):
            keep = attention[row].bool()
            alone = loaded.model(input_ids=ids[row:row + 1, keep]).logits
            for alone_mask, batch_mask in zip((runtime.masks.stacked()), batched_masks):
                torch.testing.assert_close(alone_mask[0], batch_mask[min(row, len(batch_mask) - 1)], rtol=0, atol=0)
            if row < 2:
                torch.testing.assert_close(alone[0], batched[row, keep], rtol=1e-4, atol=1e-4)


def test_level_zero_gives_the_dense_logits(trained):
    loaded, traces = trained
    ids, attention = _inputs(loaded)
    with torch.no_grad():
        dense = loaded.model(input_ids=ids, attention_mask=attention).logits
    policy = SparsityPolicy(SparsityConfig(level=0.0), loaded.shape)
    with per_sequence(loaded, _fitted(loaded, traces, "shadowllm"), "shadowllm", policy) as runtime, torch.no_grad():
        masked = loaded.model(input_ids=ids, attention_mask=attention).logits
        assert all((m == 1).all() for m in runtime.masks.stacked())
    assert torch.equal(masked, dense)


def test_saved_and_reloaded_predictor_gives_identical_masks(trained, tmp_path):
    loaded, traces = trained
    fitted = _fitted(loaded, traces, "shadowllm")
    save_predictor(fitted, tmp_path, loaded.name, loaded.shape, "plainact")
    reloaded = load_predictor(tmp_path, loaded.name, loaded.shape, "plainact", kind="shadowllm")
    policy = SparsityPolicy(SparsityConfig(level=0.5), loaded.shape)
    ids, attention = _inputs(loaded)
    masks = []
    for predictor in (fitted, reloaded):
        with per_sequence(loaded, predictor, "shadowllm", policy) as runtime, torch.no_grad():
            loaded.model(input_ids=ids, attention_mask=attention)
            masks.append((runtime.masks.stacked()))
    assert torch.equal(masks[0][0], masks[1][0]) and torch.equal(masks[0][1], masks[1][1])


def test_a_predictor_for_another_model_or_criterion_is_rejected(trained, tmp_path):
    loaded, traces = trained
    save_predictor(_fitted(loaded, traces, "static"), tmp_path, loaded.name, loaded.shape, "plainact")
    with pytest.raises(ConfigError, match="criterion plainact, but this job has criterion l2_norm"):
        load_predictor(tmp_path, loaded.name, loaded.shape, "l2_norm")
    with pytest.raises(ConfigError, match="model"):
        load_predictor(tmp_path, "smollm2-135m", loaded.shape, "plainact")
    with pytest.raises(ConfigError, match="selector static, but this job has selector shadowllm"):
        load_predictor(tmp_path, loaded.name, loaded.shape, "plainact", kind="shadowllm")


def test_both_losses_learn_a_known_relation_from_per_token_rows_split_by_example():
    """Token rows (a TokenBatch) are split by example; MSE and top-k classification both
    recover the rankings of a known relation."""
    from shadow_sweep.config import PredictorLoss
    from shadow_sweep.predictors.fit import split_rows
    from shadow_sweep.traces.collect import TokenBatch

    traces = synthetic_traces(SHAPE, 600)
    example = torch.arange(600) // 6  # 100 examples of 6 tokens
    tokens = TokenBatch(traces.shadow_input, traces.dejavu_input, traces.head_scores, traces.neuron_scores,
                        traces.mlp_input, example, torch.arange(600) % 6)
    train, validation = split_rows(tokens, 0.2, 0)
    assert set(example[train].tolist()).isdisjoint(example[validation].tolist())
    assert len(validation) == 120
    for loss in PredictorLoss:
        cfg = PredictorConfig(name="shadowllm", width=128, bottleneck=0, epochs=150, lr=3e-3, loss=loss)
        fitted = fitted_for("shadowllm", SHAPE, tokens, width=128, bottleneck=0, epochs=150, lr=3e-3, loss=loss)
        quality = quality_of("shadowllm", fitted, tokens, cfg, keep_heads=4, keep_neurons=12)
        assert quality["heads_recall_mean"] > 0.8 and quality["neurons_recall_mean"] > 0.8, loss


def test_spearman_and_recall_with_ties_and_constant_layers():
    """Average ranks as scipy gives them; recall's expected share of tied units; a layer whose
    targets are constant is left out and counted."""
    from shadow_sweep.predictors.quality import quality_report

    g = torch.Generator().manual_seed(1)
    predicted = torch.rand(6, 2, 12, generator=g)
    target = torch.randint(0, 3, (6, 2, 12), generator=g).float()  # many ties, like fp16 zeros
    target[0, 1] = 0.0  # a constant (row, layer): no ranking
    expected = torch.tensor([[spearmanr(predicted[i, l], target[i, l]).statistic if (i, l) != (0, 1) else 0.0
                              for l in range(2)] for i in range(6)], dtype=torch.float64)
    rho = spearman(predicted, target)
    torch.testing.assert_close(rho[0], expected[:, 0].mean(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(rho[1], expected[1:, 1].mean(), rtol=1e-9, atol=1e-12)
    tied = torch.tensor([[[5.0, 1.0, 1.0, 1.0]]])  # top-2: unit 0, then one of three tied units
    assert top_k_recall(torch.tensor([[[4.0, 3.0, 0.0, 0.0]]]), tied, 2).item() == pytest.approx((1 + 1 / 3) / 2)
    assert top_k_recall(torch.tensor([[[0.0, 3.0, 4.0, 0.0]]]), tied, 2).item() == pytest.approx((2 / 3) / 2)
    report = quality_report(predicted, target, predicted, target, 4, 4)
    assert report["heads_constant_rows"] == 1 and report["heads_recall_mean"] < 1


def test_untrained_predictors_have_the_models_shapes_and_are_seeded():
    from shadow_sweep.predictors.fit import untrained

    shape = ModelShape(num_layers=4, num_heads=6, num_kv_heads=2, head_dim=8, num_neurons=40, hidden_size=48)
    for kind in ("shadowllm", "dejavu"):
        cfg = PredictorConfig(name=kind)
        layout = spec(kind).network
        first = untrained(cfg, shape, kind, layout)
        inputs = torch.randn(3, 1, 48) if layout.one_network else torch.randn(3, 3, 48)  # H*d = D = 48 here
        heads, neurons = layout.split(first.net(inputs), shape)
        assert heads.shape == (3, 3, 6) and neurons.shape == (3, 3, 40)
        again = untrained(cfg, shape, kind, layout)
        assert all(torch.equal(a, b) for a, b in zip(first.net.parameters(), again.net.parameters()))
    static = untrained(PredictorConfig(name="static"), shape, "static")
    assert static.net is None and static.mean_neuron_scores.shape == (4, 40)
