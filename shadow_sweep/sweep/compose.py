"""Compose the app config outside `@hydra.main` (tests, benchmarks, notebooks)."""

from pathlib import Path
from typing import Sequence

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from shadow_sweep.config import AppConfig, register_configs

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def compose_config(overrides: Sequence[str] = ()) -> AppConfig:
    """The typed app config for these overrides, exactly as `shadow-sweep` composes it."""
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    return OmegaConf.to_object(cfg)
