"""Private APIs of lm-eval, Hydra and gguf that the package relies on: a release that moves one
fails here, naming it, instead of deep inside a job. And the install is the locked one: every
distribution constraints.txt pins is installed at its pinned version (make setup, CI)."""

import importlib
from importlib import metadata
from pathlib import Path

import pytest

PRIVATE = [
    ("lm_eval.tasks._yaml_loader", "load_yaml", "data/tasks.py: lm-eval's own YAML loader for built-in tasks"),
    ("lm_eval.models.utils", "_add_special_kwargs", "data/requests.py: HFLM's BOS rule"),
    ("lm_eval.api.model", "TemplateLM._encode_pair", "data/requests.py: lm-eval's context/continuation split"),
    ("hydra._internal.core_plugins.basic_sweeper", "BasicSweeper",
     "hydra_plugins/shadow_sweep_sweeper: the skip_finished sweeper extends it"),
    ("gguf", "GGUFReader._build_tensors", "models/gguf.py: TensorTable reads the tensor table without its data"),
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


def locked_versions() -> dict[str, str]:
    lock = Path(__file__).resolve().parents[1] / "constraints.txt"
    pins = [line.split("#")[0].strip() for line in lock.read_text().splitlines()]
    return dict(pin.split("==") for pin in pins if pin)


def test_the_install_holds_the_locked_versions():
    locked = locked_versions()
    assert len(locked) > 100 and {"torch", "transformers", "lm_eval", "hydra-core", "pandas"} <= {
        name.replace("-", "_") if name == "lm-eval" else name for name in locked} | {"lm_eval"}
    installed = {}
    for name, version in locked.items():
        try:
            installed[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # an optional extra (.[gemma]) or a test-only install elsewhere
    drifted = {name: (version, installed[name]) for name, version in locked.items()
               if name in installed and installed[name].split("+")[0] != version}
    assert not drifted, f"installed versions differ from constraints.txt (run make lock to re-pin): {drifted}"
