"""Accuracy on lm-eval tasks: offline from the data root, or online by any lm-eval task name.

Offline tasks (`shadow_sweep.data.converters.TASK_FILES`) are lm-eval's built-in task
definitions over the evaluation part of our converted files, so prompts and metrics are
those of the built-in tasks. Any other name is loaded by lm-eval's TaskManager when the hub
is reachable; offline, it fails before the model loads, naming the task and the data root.
"""

import os
from pathlib import Path

from lm_eval import evaluator
from lm_eval.api.task import Task
from lm_eval.tasks import TaskManager

from shadow_sweep.cache import StageCache
from shadow_sweep.config import ConfigError, EvalConfig
from shadow_sweep.data.converters import TASK_FILES
from shadow_sweep.data.tasks import EVALUATION, SplitRule, offline_task
from shadow_sweep.evaluation.lm import SparseLM


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


def task_accuracy(lm: SparseLM, tasks: list[Task | str], cfg: EvalConfig) -> dict[str, dict[str, float]]:
    """{task: {acc, acc_norm (when the task has it)}} with lm-eval's own metrics. lm-eval's task
    index (~10 s to build) is built only when some task is named rather than built offline."""
    index = TaskManager(include_defaults=any(isinstance(t, str) for t in tasks))
    out = evaluator.simple_evaluate(model=lm, tasks=tasks, task_manager=index, num_fewshot=cfg.num_fewshot,
                                    limit=cfg.limit, bootstrap_iters=0, log_samples=False,
                                    fewshot_random_seed=cfg.fewshot_seed,
                                    random_seed=cfg.fewshot_seed, numpy_random_seed=cfg.fewshot_seed,
                                    torch_random_seed=cfg.fewshot_seed)
    return {task: {metric.split(",")[0]: value for metric, value in metrics.items()
                   if metric.split(",")[0] in ("acc", "acc_norm") and isinstance(value, float)}
            for task, metrics in out["results"].items()}
