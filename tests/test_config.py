"""Every config composes; bad input fails early with the field and the allowed values."""

import re
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf.errors import ValidationError

from shadow_sweep.config import ConfigError, ModelSource
from shadow_sweep.validation import validate
from shadow_sweep.sweep.compose import CONF_DIR
from tests.conftest import compose_app

MODEL_NAMES = sorted(p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml"))


def test_default_is_the_embedded_model():
    cfg = compose_app()
    assert cfg.model.name == "smollm2-135m" and cfg.model.source == ModelSource.gguf_package
    validate(cfg)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_config_composes_and_validates(name):
    cfg = compose_app([f"model={name}"])
    assert cfg.model.name == name
    validate(cfg)


def test_unknown_model_lists_the_options():
    with pytest.raises(MissingConfigException, match=r"(?s)model/nope.*smollm2-135m.*tiny-llama"):
        compose_app(["model=nope"])


def test_bad_dtype_names_the_field_and_the_allowed_values():
    with pytest.raises(ConfigCompositionException) as error:
        compose_app(["model.dtype=float8"])
    assert isinstance(error.value.__cause__, ValidationError)
    assert re.search(r"(?s)expected one of \[float32, bfloat16, float16\].*full_key: model.dtype",
                     str(error.value.__cause__))


def test_misspelt_key_is_rejected():
    with pytest.raises(Exception, match="perplexity.windw"):
        compose_app(["perplexity.windw=3"])


@pytest.mark.parametrize("override, field", [("sparsity.level=1.0", "sparsity.level"),
                                             ("sparsity.levels=[0.5,1.5]", "sparsity.level"),
                                             ("sparsity.neuron_level=-0.1", "sparsity.neuron_level"),
                                             ("sparsity.keep_first_layer_dense=false", "sparsity.keep_first_layer_dense"),
                                             ("predictor.validation_fraction=0", "predictor.validation_fraction"),
                                             ("calibration.tasks=[piqa,boolq]", "calibration.tasks"),
                                             ("perplexity.stride=999", "perplexity.stride"),
                                             ("perplexity.batch_size=0", "perplexity.batch_size")])
def test_out_of_range_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.") + ".*expected"):
        validate(compose_app([override]))
