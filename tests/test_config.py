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
GROUP_OPTIONS = [(group.name, p.stem) for group in sorted(Path(CONF_DIR).iterdir()) if group.is_dir()
                 and group.name not in ("model", "hydra") for p in sorted(group.glob("*.yaml"))]


def test_default_is_the_embedded_model():
    cfg = compose_app()
    assert cfg.model.name == "smollm2-135m" and cfg.model.source == ModelSource.gguf_package
    validate(cfg)


@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if n != "local"])
def test_every_model_config_composes_and_validates(name):
    cfg = compose_app([f"model={name}"])
    assert cfg.model.name == name
    validate(cfg)


@pytest.mark.parametrize("path, source, name", [("models/my-model.Q4_K_M.gguf", ModelSource.gguf_file, "my-model.Q4_K_M"),
                                                ("checkpoints/opt-350m/", ModelSource.hub, "opt-350m")])
def test_the_local_model_takes_source_and_name_from_its_path(path, source, name):
    field = "gguf_path" if source == ModelSource.gguf_file else "local_path"
    cfg = compose_app(["model=local", f"model.{field}={path}"])
    assert (cfg.model.source, cfg.model.name) == (source, name)
    validate(cfg)
    assert compose_app(["model=local", f"model.{field}={path}", "model.name=mine"]).model.name == "mine"


def test_unknown_model_lists_the_options():
    with pytest.raises(MissingConfigException, match=r"(?s)model/nope.*smollm2-135m.*tiny-llama"):
        compose_app(["model=nope"])


def test_bad_dtype_names_the_field_and_the_allowed_values():
    with pytest.raises(ConfigCompositionException) as error:
        compose_app(["model.dtype=float8"])
    assert isinstance(error.value.__cause__, ValidationError)
    assert re.search(r"(?s)expected one of \[auto, float32, bfloat16, float16\].*full_key: model.dtype",
                     str(error.value.__cause__))


def test_misspelt_key_is_rejected():
    with pytest.raises(Exception, match="perplexity.windw"):
        compose_app(["perplexity.windw=3"])


@pytest.mark.parametrize("override, field", [("sparsity.level=1.0", "sparsity.level"),
                                             ("sparsity.levels=[0.5,1.5]", "sparsity.level"),
                                             ("sparsity.neuron_level=-0.1", "sparsity.neuron_level"),
                                             ("sparsity.keep_first_layer_dense=false", "sparsity.keep_first_layer_dense"),
                                             ("predictor.validation_fraction=0", "predictor.validation_fraction"),
                                             ("perplexity.stride=999", "perplexity.stride"),
                                             ("perplexity.batch_size=0", "perplexity.batch_size")])
def test_out_of_range_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.") + ".*expected"):
        validate(compose_app([override]))


NO_PER_TOKEN_FORM = {("criterion", "nwot"), ("criterion", "jacov"), ("criterion", "epenas"),
                     ("predictor", "oracle")}  # the oracle per token needs criterion=l2_norm


@pytest.mark.parametrize("group, option", GROUP_OPTIONS)
def test_every_group_option_composes_and_validates(group, option):
    if (group, option) not in NO_PER_TOKEN_FORM:
        validate(compose_app([f"{group}={option}"]))
        return
    validate(compose_app([f"{group}={option}", "sparsity.update=per_sequence"]))
    with pytest.raises(ConfigError, match=r"criterion\.name=.*per.token"):
        validate(compose_app([f"{group}={option}"]))


def test_update_and_prefill_are_enums_naming_their_values():
    for override, values in (("sparsity.update=per_batch", "per_token, per_sequence"),
                             ("sparsity.prefill=half", "sparse, dense"),
                             ("bench.kernel=triton", "fused_layer, fused, eager"),
                             ("bench.updates=[per_tok]", "per_token, per_sequence")):
        with pytest.raises(ConfigCompositionException) as error:
            compose_app([override])
        assert f"expected one of [{values}]" in str(error.value.__cause__), override
    cfg = compose_app(["predictor=oracle", "criterion=l2_norm"])
    validate(cfg)
    assert cfg.sparsity.update.value == "per_token" and cfg.bench.updates == []


def test_experiments_set_what_they_promise():
    assert compose_app(["experiment=paper_opt13b"]).model.name == "opt-13b"
    paper = compose_app(["experiment=paper_smollm2"])
    assert paper.eval.limit is None and len(paper.eval.tasks) == 7 and paper.calibration.shots == 5
    assert compose_app(["experiment=ablation_shots"]).criterion.name.value == "fisher"
    global_norm = compose_app(["predictor=shadowllm_global_norm"]).predictor
    assert global_norm.name == "shadowllm" and global_norm.target_norm.value == "global"


@pytest.mark.parametrize("experiment, swept", [("ablation_criteria", {"criterion"}),
                                               ("ablation_ranking", {"sparsity", "predictor"}),
                                               ("ablation_shots", {"calibration.shots"}),
                                               ("ablation_predictor_design", {"predictor"}),
                                               ("ablation_update", {"sparsity.update", "predictor"})])
def test_ablations_are_ready_multiruns_over_existing_options(experiment, swept):
    from hydra import compose, initialize_config_dir

    from shadow_sweep.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    assert cfg.hydra.mode.name == "MULTIRUN" and set(cfg.hydra.sweeper.params) == swept
    for name, values in cfg.hydra.sweeper.params.items():
        for value in values.split(","):
            validate(compose_app([f"experiment={experiment}", f"{name}={value}"]))


def test_unknown_logger_and_experiment_list_the_options():
    with pytest.raises(MissingConfigException, match=r"(?s)logger/mlflow.*none.*wandb"):
        compose_app(["logger=mlflow"])
    with pytest.raises(MissingConfigException, match=r"(?s)experiment/paper.*ablation_criteria.*quick"):
        compose_app(["experiment=paper"])


def test_bad_logger_mode_names_the_field():
    with pytest.raises(ConfigCompositionException) as error:
        compose_app(["logger.mode=cloud"])
    assert re.search(r"(?s)expected one of \[auto, online, offline\].*full_key: logger.mode", str(error.value.__cause__))
