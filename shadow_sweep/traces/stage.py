"""The trace stage: calibration examples -> traces, cached under the fields that affect them."""

from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from shadow_sweep.cache import StageCache
from shadow_sweep.config import AppConfig, ModelSource
from shadow_sweep.criteria.registry import get_criterion
from shadow_sweep.data.calibration import encode_example, plain_text_examples, task_examples
from shadow_sweep.data.requests import RequestEncoder
from shadow_sweep.data.task_sources import definitions_digest
from shadow_sweep.data.tasks import SplitRule
from shadow_sweep.models.gguf import gguf_identity
from shadow_sweep.models.loading import LoadedModel
from shadow_sweep.traces.collect import collect
from shadow_sweep.traces.store import TraceSet, load_traces, save_traces


def model_identity(cfg: AppConfig) -> dict[str, Any]:
    """The model fields that change its weights or numerics (not where it runs)."""
    fields = OmegaConf.to_container(OmegaConf.structured(cfg.model), enum_to_str=True)
    fields.pop("device")
    fields.pop("install_hint")
    if cfg.model.source == ModelSource.gguf_file:  # the file's content, wherever it lies
        fields["gguf_path"] = gguf_identity(cfg.model.gguf_path)
    return fields


def trace_key(cfg: AppConfig) -> dict[str, Any]:
    calibration = asdict(cfg.calibration)
    calibration.pop("batch_size")  # traces are exact per example whatever the batch
    criterion = asdict(cfg.criterion)
    criterion["name"] = cfg.criterion.name.value
    key = {"model": model_identity(cfg), "criterion": criterion, "calibration": calibration,
           "data_split": asdict(cfg.data_split), "data_root": str(Path(cfg.paths.data_root).resolve())}
    definitions = definitions_digest(cfg.calibration.tasks, cfg.eval.include_path)
    if definitions:  # the user's task definitions, by content
        key["task_definitions"] = definitions
    return key


def calibration_set(cfg: AppConfig, loaded: LoadedModel, cache: StageCache):
    rule = SplitRule(cfg.data_split.calibration_fraction, cfg.data_split.seed)
    cal = cfg.calibration
    examples = [e for task in cal.tasks
                for e in task_examples(task, cal.examples_per_task, cal.shots, cal.seed, cfg.paths.data_root, rule, cache,
                                       cfg.eval.include_path)]
    if cal.plain_text_examples:
        examples += plain_text_examples(loaded.tokenizer, cal.plain_text_examples, cal.max_length,
                                        cfg.paths.data_root, rule)
    requests = RequestEncoder(loaded.tokenizer, cfg.model.add_bos_token)
    encoded = [encode_example(requests, e, cal.max_length) for e in examples]
    return examples, encoded


def traces_for(cfg: AppConfig, loaded: LoadedModel, cache: StageCache, progress: bool = True) -> tuple[TraceSet, Path]:
    """The cached traces of this config, collected first when missing."""
    criterion = get_criterion(cfg.criterion.name.value)

    def build(folder: Path) -> None:
        examples, encoded = calibration_set(cfg, loaded, cache)
        batch, tokens = collect(loaded, criterion, cfg.criterion, encoded, examples, cfg.calibration.batch_size,
                                progress, cfg.calibration.positions_per_example)
        save_traces(TraceSet(batch, examples, tokens), folder)

    folder = cache.get_or_build("traces", trace_key(cfg), build)
    return load_traces(folder), folder
