"""lm-eval tasks over our split of their documents, offline from the data root.

Each task's documents (`data.task_sources`: converted built-in tasks, or any lm-eval task
from `eval.include_path` or lm-eval's own list) are split once, by a seeded rule both stages
share, into a calibration part (traces, few-shot demonstrations) and an evaluation part:
- a separate split where the data has one (ARC-Easy Dev, OpenBookQA dev);
- else a seeded permutation of the scored split (test, else validation): the first
  round(fraction * N) documents calibrate, the rest are evaluated.
The parts are written as JSON lines into the stage cache and loaded by lm-eval's own
`ConfigurableTask` through the `json` data set builder, with the task's YAML prompts,
choices and metrics unchanged.
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path

from lm_eval.api.task import ConfigurableTask

from shadow_sweep.cache import StageCache
from shadow_sweep.data.task_sources import TaskSource, task_source

CALIBRATION, EVALUATION = "calibration", "evaluation"


@dataclass(frozen=True)
class SplitRule:
    calibration_fraction: float = 0.2
    seed: int = 1234


def partition(task: str, num_docs: int, rule: SplitRule) -> tuple[list[int], list[int]]:
    """(calibration indices, evaluation indices) of a validation file: disjoint, seeded."""
    order = list(range(num_docs))
    random.Random(f"{rule.seed}:{task}").shuffle(order)
    cut = round(rule.calibration_fraction * num_docs)
    return sorted(order[:cut]), sorted(order[cut:])


def split_source(source: TaskSource, rule: SplitRule) -> dict[str, list[dict]]:
    scored, calibration = source.documents()
    if calibration is not None:
        return {CALIBRATION: calibration, EVALUATION: scored}
    calibration_ids, evaluation_ids = partition(source.name, len(scored), rule)
    return {CALIBRATION: [scored[i] for i in calibration_ids], EVALUATION: [scored[i] for i in evaluation_ids]}


def split_documents(task: str, data_root: str | Path, rule: SplitRule, include_path: list[str] = ()
                    ) -> dict[str, list[dict]]:
    return split_source(task_source(task, data_root, include_path), rule)


def offline_task(task: str | TaskSource, data_root: str | Path, rule: SplitRule, cache: StageCache,
                 scored_split: str, include_path: list[str] = ()) -> ConfigurableTask:
    """lm-eval's task `task` whose scored documents are our `scored_split` part; few-shot
    demonstrations always come from the calibration part (a document never demonstrates itself)."""
    if scored_split not in (CALIBRATION, EVALUATION):
        raise ValueError(f"scored_split must be {CALIBRATION!r} or {EVALUATION!r}, got {scored_split!r}")
    source = task if isinstance(task, TaskSource) else task_source(task, data_root, include_path)
    fields = {**source.key, "fraction": rule.calibration_fraction, "seed": rule.seed}

    def write(folder: Path) -> None:
        for split, docs in split_source(source, rule).items():
            with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as sink:
                sink.writelines(json.dumps(doc, default=str) + "\n" for doc in docs)

    folder = cache.get_or_build("tasks", fields, write)
    parts = [p for p in (CALIBRATION, EVALUATION) if (folder / f"{p}.jsonl").stat().st_size > 0]
    if scored_split not in parts:
        raise ValueError(f"task {source.name!r} has no {scored_split} documents (data_split.calibration_fraction="
                         f"{rule.calibration_fraction})")
    config = dict(source.config)
    for key in ("tag", "group"):
        config.pop(key, None)
    for metric in config.get("metric_list", []):  # copa, rte: lm-eval warns and assumes these
        metric.setdefault("aggregation", "mean")
        metric.setdefault("higher_is_better", True)
    config.update(
        dataset_path="json", dataset_name=None,
        dataset_kwargs={"data_files": {split: str(folder / f"{split}.jsonl") for split in parts}},
        training_split=None, validation_split=None, test_split=scored_split,
        fewshot_split=CALIBRATION if CALIBRATION in parts else None,
    )
    return ConfigurableTask(config=config)
