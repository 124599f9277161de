"""Accuracy on lm-eval tasks: offline from the data root, or online by any lm-eval task name.

Offline tasks (`shadow_sweep.data.converters.TASK_FILES`) are lm-eval's built-in task
definitions over the evaluation part of our converted files, so prompts and metrics are
those of the built-in tasks. Any other name is loaded by lm-eval's TaskManager when the hub
is reachable; offline, it fails before the model loads, naming the task and the data root.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from lm_eval import evaluator
from lm_eval.api.task import Task
from lm_eval.tasks import TaskManager

from shadow_sweep.cache import StageCache
from shadow_sweep.config import ConfigError, EvalConfig
from shadow_sweep.data.converters import TASK_FILES
from shadow_sweep.data.tasks import EVALUATION, SplitRule, offline_task
from shadow_sweep.evaluation.lm import SparseLM

STDERR_BOOTSTRAP_ITERATIONS = 1000  # > 0 turns lm-eval's stderr on (closed form for acc / acc_norm)


def hub_offline() -> bool:
    return any(os.environ.get(v, "0").lower() not in ("0", "", "false") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def check_tasks(names: list[str], data_root: str | Path) -> None:
    """Before the model loads: every task is available offline, or the hub is reachable."""
    missing = [n for n in names if n not in TASK_FILES]
    if missing and hub_offline():
        raise ConfigError(
            f"eval.tasks {missing} have no offline data under the data root {str(data_root)!r} (offline tasks: "
            f"{', '.join(sorted(TASK_FILES))}) and the hub is offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)")


def build_tasks(names: list[str], data_root: str | Path, rule: SplitRule, cache: StageCache) -> list[Task | str]:
    """Offline Task objects where we have the data; names for lm-eval to load otherwise."""
    return [offline_task(n, data_root, rule, cache, EVALUATION) if n in TASK_FILES else n for n in names]


SCORED = ("acc", "acc_norm")  # lm-eval's metrics a row keeps, with their stderr


@dataclass
class TaskResults:
    """metrics: {task: {acc, acc_stderr, acc_norm, acc_norm_stderr (when the task has it),
    documents}}; outcomes: {task: [{doc_id, acc, acc_norm, loglikelihoods (one per choice),
    target (lm-eval's: the gold index, or the gold text for copa-like tasks)}]}, lm-eval's
    per-sample results in the order of its documents."""

    metrics: dict[str, dict[str, float]]
    outcomes: dict[str, list[dict]]


def _outcome(sample: dict) -> dict:
    kept = {metric: float(sample[metric]) for metric in SCORED if metric in sample}
    loglikelihoods = [float(response[0]) for response in sample["filtered_resps"]]
    return {"doc_id": int(sample["doc_id"]), **kept, "loglikelihoods": loglikelihoods, "target": sample["target"]}


def task_accuracy(lm: SparseLM, tasks: list[Task | str], cfg: EvalConfig) -> TaskResults:
    """lm-eval's own metrics and their stderr (s / sqrt(n), lm-eval's closed form for a mean),
    and the per-document outcomes (`log_samples`). lm-eval's task index (~10 s to build) is
    built only when some task is named rather than built offline."""
    index = TaskManager(include_defaults=any(isinstance(t, str) for t in tasks))
    out = evaluator.simple_evaluate(model=lm, tasks=tasks, task_manager=index, num_fewshot=cfg.num_fewshot,
                                    limit=cfg.limit, bootstrap_iters=STDERR_BOOTSTRAP_ITERATIONS, log_samples=True,
                                    fewshot_random_seed=cfg.fewshot_seed,
                                    random_seed=cfg.fewshot_seed, numpy_random_seed=cfg.fewshot_seed,
                                    torch_random_seed=cfg.fewshot_seed)
    metrics = {}
    for task, values in out["results"].items():
        named = {key.split(",")[0]: value for key, value in values.items() if isinstance(value, float)}
        metrics[task] = {name: named[name] for metric in SCORED for name in (metric, f"{metric}_stderr")
                         if name in named}
        metrics[task]["documents"] = len(out["samples"][task])
    outcomes = {task: [_outcome(sample) for sample in samples] for task, samples in out["samples"].items()}
    return TaskResults(metrics, outcomes)
