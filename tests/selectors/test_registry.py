"""The registry: a selector registered from outside the package runs a job with no other code
changes; names and combinations a selector does not declare fail before anything loads."""

import json

import pytest
import torch

from shadow_sweep.config import ConfigError
from shadow_sweep.models.masks import Slot
from shadow_sweep.selectors.base import ALL_UPDATES, Block, ForwardInputs, Point, Selector, SelectorSpec
from shadow_sweep.selectors.registry import SELECTORS, selection_of
from shadow_sweep.sparsity.topk import keep_count
from shadow_sweep.sweep.job import run_job
from shadow_sweep.validation import validate
from tests.conftest import compose_app


class FirstNeurons(Selector):
    """Keeps the first round((1 - level) I) neurons of every selected layer, for every input."""

    spec = SelectorSpec(name="first_neurons", blocks=(Block.mlp,), point=Point.ahead, updates=ALL_UPDATES,
                        source="a test")

    def start(self, inputs: ForwardInputs) -> None:
        plan = self.point.policy.neurons
        mask = torch.zeros(1, self.shape.num_neurons)
        mask[:, :keep_count(plan.level, self.shape.num_neurons)] = 1.0
        for layer in range(plan.first_pooled_layer, self.shape.num_layers):
            self.set_slot(Slot.neuron_activation, layer, mask)


def test_a_selector_registered_from_a_test_module_runs_a_job(tmp_path, data_root, monkeypatch):
    monkeypatch.setitem(SELECTORS, "first_neurons", FirstNeurons)
    cfg = compose_app(["model=tiny-llama", f"paths.data_root={data_root}", f"paths.cache_dir={tmp_path / 'cache'}",
                       "logger=none", "predictor.name=first_neurons", "perplexity.max_documents=1",
                       "perplexity.window=64", "stages.bench=false", "eval.tasks=[copa]", "eval.limit=4",
                       "eval.baseline_selectors=[]", "calibration.examples_per_task=1"])
    run_job(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    dense, point, job = rows
    assert point["predictor"] == "first_neurons" and point["heads_selector"] == "dense"
    assert point["kept/neuron_activation"] == 0.5 and point["kept/head_context"] == 1.0
    assert point["bytes_fraction"] < dense["bytes_fraction"] == 1.0
    assert point["token_perplexity"] != dense["token_perplexity"]
    assert job["status"] == "ok" and "traces_examples" not in job  # it needs no traces: none are computed


@pytest.mark.parametrize("overrides, message", [
    (["predictor.name=teals"], r"predictor.name='teals' is not allowed: expected a registered selector"),
    (["predictor=shadowllm", "predictor.heads=cats"], r"predictor.heads='cats'.*selects no attention units"),
    (["predictor=teal", "sparsity.update=per_sequence"], r"sparsity.update='per_sequence'.*with selector teal"),
    (["predictor=shadowllm", "sparsity.rule=threshold"], r"sparsity.rule='threshold'.*with selector shadowllm"),
    (["predictor=shadowllm", "eval.baseline_selectors=[]", "sparsity.allocation=greedy"],
     r"sparsity.allocation='greedy'.*a selector at a linear's input"),
    (["bench.predictors=[oracle]"], r"bench.predictors='oracle'.*selectors the decode path runs"),
        (["bench.predictors=[teal]", "bench.updates=[per_sequence]"], r"bench.predictors='teal'.*under bench.updates"),
    (["predictor=dejavu", "sparsity.keep_first_layer_dense=false"], r"keep_first_layer_dense.*with selector dejavu"),
    (["predictor=oracle", "criterion=plainact"], r"criterion.name='plainact'.*predictor=oracle"),
])
def test_what_a_selector_does_not_declare_fails_naming_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_app(["model=tiny-llama", *overrides]))


def test_a_block_names_its_selector_and_the_label_names_both():
    assert selection_of("cats").label == "cats" and selection_of("cats").heads == "dense"
    mixed = selection_of("shadowllm", neurons="cats")
    assert (mixed.heads, mixed.neurons, mixed.label) == ("shadowllm", "cats", "shadowllm+cats")
    assert selection_of("teal", heads="teal").label == "teal"
    validate(compose_app(["model=tiny-llama", "predictor=cats", "predictor.heads=shadowllm"]))
    validate(compose_app(["model=tiny-llama", "predictor=teal", "sparsity.keep_first_layer_dense=false"]))
