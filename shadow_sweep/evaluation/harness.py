"""Accuracy on lm-eval tasks, each over the evaluation part of our split of its documents.

Tasks are lm-eval's own definitions (`data.task_sources`): the seven converted built-in
tasks, the user's YAMLs in `eval.include_path`, or any built-in task whose data set is on
disk (or on a reachable hub); prompts and metrics are the YAML's. A task that cannot be
found or read fails before the model loads, naming the task and where it was looked for.
"""

from dataclasses import dataclass
from pathlib import Path

from lm_eval import evaluator
from lm_eval.api.task import Task
from lm_eval.tasks import TaskManager

from shadow_sweep.cache import StageCache
from shadow_sweep.config import ConfigError, EvalConfig
from shadow_sweep.data.task_sources import TaskSource, UnknownTaskError, task_source
from shadow_sweep.data.tasks import EVALUATION, SplitRule, offline_task
from shadow_sweep.evaluation.lm import SparseLM

STDERR_BOOTSTRAP_ITERATIONS = 1000  # > 0 turns lm-eval's stderr on (closed form for acc / acc_norm)


def check_tasks(evaluated: list[str], calibrating: list[str], data_root: str | Path, include_path: list[str]
                ) -> dict[str, TaskSource]:
    """Before the model loads: every task is found and its documents read; calibration tasks are
    multiple-choice (their gold answer is the calibration example's continuation). Returns the
    sources by name, for `build_tasks` to reuse."""
    sources = {}
    for field_name, names in (("eval.tasks", evaluated), ("calibration.tasks", calibrating)):
        for name in names:
            try:
                if name not in sources:
                    sources[name] = task_source(name, data_root, include_path)
                    sources[name].documents()  # the files exist and parse (an indexed source has read them)
            except UnknownTaskError as error:
                raise ConfigError(f"{field_name}: {error}") from error
            except (ValueError, KeyError, IndexError, UnicodeDecodeError) as error:  # a converter's parse error
                raise ConfigError(f"{field_name}: task {name!r}: its files under paths.data_root={str(data_root)!r} "
                                  f"do not parse ({type(error).__name__}: {error})") from error
            if field_name == "calibration.tasks" and not sources[name].multiple_choice:
                raise ConfigError(f"calibration.tasks: task {name!r} has output_type "
                                  f"{sources[name].config.get('output_type')!r}; calibration needs multiple_choice tasks")
    return sources


def build_tasks(tasks: list[str | TaskSource], data_root: str | Path, rule: SplitRule, cache: StageCache,
                include_path: list[str] = ()) -> list[Task]:
    """Task names, or sources already read (`check_tasks`), as lm-eval tasks over our evaluation part."""
    return [offline_task(task, data_root, rule, cache, EVALUATION, include_path) for task in tasks]


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


def task_accuracy(lm: SparseLM, tasks: list[Task], cfg: EvalConfig) -> TaskResults:
    """lm-eval's own metrics and their stderr (s / sqrt(n), lm-eval's closed form for a mean),
    and the per-document outcomes (`log_samples`). The tasks are built already: lm-eval gets an
    empty index (its default one takes ~10 s to build)."""
    empty_index = TaskManager(include_defaults=False)
    out = evaluator.simple_evaluate(model=lm, tasks=tasks, task_manager=empty_index, num_fewshot=cfg.num_fewshot,
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
