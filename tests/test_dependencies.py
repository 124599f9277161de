"""Private APIs of lm-eval and Hydra that the package relies on: a release that moves one
fails here, naming it, instead of deep inside a job."""

import importlib

import pytest

PRIVATE = [
    ("lm_eval.tasks._yaml_loader", "load_yaml", "data/tasks.py: lm-eval's own YAML loader for built-in tasks"),
    ("lm_eval.models.utils", "_add_special_kwargs", "data/requests.py: HFLM's BOS rule"),
    ("lm_eval.api.model", "TemplateLM._encode_pair", "data/requests.py: lm-eval's context/continuation split"),
    ("hydra._internal.core_plugins.basic_sweeper", "BasicSweeper",
     "hydra_plugins/shadow_sweep_sweeper: the skip_finished sweeper extends it"),
]


@pytest.mark.parametrize("module, name, used_by", PRIVATE)
def test_private_apis_we_use_still_exist(module, name, used_by):
    try:
        found = importlib.import_module(module)
        for part in name.split("."):
            found = getattr(found, part, None)
    except ImportError:
        found = None
    assert found is not None, f"{module}.{name} moved or vanished in this release; used by {used_by}"
