"""The statistics stage, and the allocation stage (selectors.allocation) that searches on them.

The statistics stage: calibration statistics (selectors.statistics) of the model on the
calibration examples at the positions the traces sample (`sample_positions`: the same tokens
for every criterion and selector), cached under the model, the calibration fields and the data
split: computed once per model and calibration set, reused across levels, selectors and
criteria."""

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from shadow_sweep.cache import StageCache
from shadow_sweep.config import AppConfig
from shadow_sweep.models.loading import LoadedModel
from shadow_sweep.models.masks import LinearInputMasks, Slot
from shadow_sweep.selectors.allocation import CAP, LEVEL_STEP, MAX_TARGET, TOKENS, GreedyPath, greedy_path
from shadow_sweep.selectors.base import PointContext
from shadow_sweep.selectors.registry import selector_class, spec
from shadow_sweep.selectors.statistics import CalibrationStatistics, collect_statistics
from shadow_sweep.sparsity.policy import SparsityPolicy
from shadow_sweep.traces.collect import sample_positions
from shadow_sweep.traces.stage import calibration_set, trace_key


PATH_TENSORS = "path.safetensors"
PATH_META = "slots.json"


def statistics_key(cfg: AppConfig) -> dict:
    """The traces' key without the criterion."""
    key = trace_key(cfg)
    key.pop("criterion")
    return key


def allocation_key(cfg: AppConfig, name: str) -> dict:
    """The greedy path of selector `name`: its statistics, rule, blocks' first layer and the
    search's constants."""
    rule = cfg.sparsity.rule or spec(name).rules[0]
    return {"statistics": statistics_key(cfg), "selector": name, "rule": rule.value,
            "first_layer_dense": cfg.sparsity.keep_first_layer_dense,
            "search": {"level_step": LEVEL_STEP, "max_target": MAX_TARGET, "cap": CAP, "tokens": TOKENS}}


def allocation_for(cfg: AppConfig, loaded: LoadedModel, cache: StageCache, name: str,
                   statistics: CalibrationStatistics, progress: bool = True) -> GreedyPath:
    """The cached greedy path of selector `name` (both blocks) on the calibration examples."""
    def build(folder: Path) -> None:
        _, encoded = calibration_set(cfg, loaded, cache)
        policy = SparsityPolicy(cfg.sparsity, loaded.shape)
        point = PointContext(loaded, policy, cfg.sparsity.update, LinearInputMasks(loaded.model, loaded.adapter,
                                                                                   loaded.shape),
                             cfg.sparsity.rule, statistics=statistics)
        selector = selector_class(name)(point, spec(name).blocks)
        path = greedy_path(selector, encoded, progress)
        save_file({k: v.contiguous() for k, v in path.tensors().items()}, str(folder / PATH_TENSORS))
        (folder / PATH_META).write_text(json.dumps([slot.value for slot in path.slots]))

    folder = cache.get_or_build("allocation", allocation_key(cfg, name), build)
    tensors = load_file(str(folder / PATH_TENSORS))
    slots = [Slot(s) for s in json.loads((folder / PATH_META).read_text())]
    return GreedyPath(slots, tensors["weighted"], tensors["levels"])


def statistics_for(cfg: AppConfig, loaded: LoadedModel, cache: StageCache, progress: bool = True
                   ) -> tuple[CalibrationStatistics, Path]:
    def build(folder: Path) -> None:
        examples, encoded = calibration_set(cfg, loaded, cache)
        count = cfg.calibration.positions_per_example
        positions = [sample_positions(example, len(e.input_ids), count) for example, e in zip(examples, encoded)]
        collect_statistics(loaded, encoded, cfg.calibration.batch_size, positions, progress).save(folder)

    folder = cache.get_or_build("statistics", statistics_key(cfg), build)
    return CalibrationStatistics.load(folder), folder
