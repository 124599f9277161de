"""Shape-only model configs (random weights, for latency) have the parameter counts of the
models they stand for: built on the meta device (no memory, no weights)."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from tests.conftest import compose_app


@pytest.mark.parametrize("name, low, high", [("smollm2-135m-shape", 0.13e9, 0.14e9),
                                             ("qwen2.5-0.5b-shape", 0.49e9, 0.50e9),
                                             ("llama2-7b-shape", 6.7e9, 6.8e9)])
def test_shape_models_have_their_models_parameter_counts(name, low, high):
    kwargs = dict(compose_app([f"model={name}"]).model.tiny)
    config = AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert low <= sum(p.numel() for p in model.parameters()) <= high
