"""Shared fixtures: configs composed with Hydra's compose API, tiny models, offline env."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

from shadow_sweep.cache import StageCache  # noqa: E402
from shadow_sweep.models.loading import LoadedModel, load_model  # noqa: E402
from shadow_sweep.sweep.compose import compose_config as compose_app  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("SHADOW_SWEEP_DATA", REPO.parent / "shared" / "data"))
TINY_MODELS = ("tiny-opt", "tiny-llama", "tiny-gemma3")


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not DATA_ROOT.is_dir():
        pytest.fail(f"offline data not found at {DATA_ROOT}; set SHADOW_SWEEP_DATA")
    return DATA_ROOT


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> StageCache:
    """A stage cache shared by the tests of one session (tiny entries only)."""
    return StageCache(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def embedded_cache() -> StageCache:
    """The project's own cache, so the embedded model is converted once per machine."""
    return StageCache(Path(os.environ.get("SHADOW_SWEEP_CACHE", REPO / "outputs" / "cache")))


def load_tiny(name: str, cache: StageCache, **model_overrides) -> LoadedModel:
    overrides = [f"model={name}"] + [f"model.{k}={v}" for k, v in model_overrides.items()]
    return load_model(compose_app(overrides).model, cache)


@pytest.fixture(params=TINY_MODELS)
def tiny(request, session_cache) -> LoadedModel:
    return load_tiny(request.param, session_cache)
