"""Offline lm-eval tasks: the built-in task definitions over our converted documents.

Each task's documents are split once, by a seeded rule both stages share, into a
calibration part (traces, few-shot demonstrations) and an evaluation part:
- a separate split where the data has one (ARC-Easy Dev, OpenBookQA dev);
- else a seeded permutation of the validation file: the first round(fraction * N)
  documents calibrate, the rest are evaluated.
The parts are written as JSON lines into the stage cache and loaded by lm-eval's own
`ConfigurableTask` through the `json` data set builder, with the built-in YAML's
prompts, choices and metrics unchanged.
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path

import lm_eval.tasks
from lm_eval.api.task import ConfigurableTask
from lm_eval.tasks._yaml_loader import load_yaml

from shadow_sweep.cache import StageCache
from shadow_sweep.data.converters import TASK_FILES

CALIBRATION, EVALUATION = "calibration", "evaluation"


class UnknownTaskError(ValueError):
    pass


@dataclass(frozen=True)
class SplitRule:
    calibration_fraction: float = 0.2
    seed: int = 1234


def check_offline_task(name: str) -> None:
    if name not in TASK_FILES:
        raise UnknownTaskError(f"task {name!r} has no offline data; offline tasks: {', '.join(sorted(TASK_FILES))}")


def partition(task: str, num_docs: int, rule: SplitRule) -> tuple[list[int], list[int]]:
    """(calibration indices, evaluation indices) of a validation file: disjoint, seeded."""
    order = list(range(num_docs))
    random.Random(f"{rule.seed}:{task}").shuffle(order)
    cut = round(rule.calibration_fraction * num_docs)
    return sorted(order[:cut]), sorted(order[cut:])


def split_documents(task: str, data_root: str | Path, rule: SplitRule) -> dict[str, list[dict]]:
    check_offline_task(task)
    files = TASK_FILES[task]
    evaluation = files.evaluation(Path(data_root))
    if files.calibration is not None:
        return {CALIBRATION: files.calibration(Path(data_root)), EVALUATION: evaluation}
    calibration_ids, evaluation_ids = partition(task, len(evaluation), rule)
    return {CALIBRATION: [evaluation[i] for i in calibration_ids], EVALUATION: [evaluation[i] for i in evaluation_ids]}


def offline_task(task: str, data_root: str | Path, rule: SplitRule, cache: StageCache, scored_split: str) -> ConfigurableTask:
    """lm-eval's task `task` whose scored documents are our `scored_split` part; few-shot
    demonstrations always come from the calibration part (a document never demonstrates itself)."""
    if scored_split not in (CALIBRATION, EVALUATION):
        raise ValueError(f"scored_split must be {CALIBRATION!r} or {EVALUATION!r}, got {scored_split!r}")
    fields = {"task": task, "data_root": str(Path(data_root).resolve()), "fraction": rule.calibration_fraction,
              "seed": rule.seed}

    def write(folder: Path) -> None:
        for split, docs in split_documents(task, data_root, rule).items():
            with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as sink:
                sink.writelines(json.dumps(doc) + "\n" for doc in docs)

    folder = cache.get_or_build("tasks", fields, write)
    parts = [p for p in (CALIBRATION, EVALUATION) if (folder / f"{p}.jsonl").stat().st_size > 0]
    if scored_split not in parts:
        raise ValueError(f"task {task!r} has no {scored_split} documents (data_split.calibration_fraction="
                         f"{rule.calibration_fraction})")
    config = load_yaml(Path(lm_eval.tasks.__file__).parent / TASK_FILES[task].lm_eval_yaml, resolve_func=True)
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
