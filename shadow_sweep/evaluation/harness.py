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
    """metrics: {task: {every metric of its metric_list and its stderr where lm-eval gives one
    (acc, acc_stderr, acc_norm, perplexity, ...; `<metric>:<filter>` for filters other than
    none), documents}}; outcomes: {task: [{doc_id, each metric's per-document value, loglikelihoods
    (one per choice), target (lm-eval's: the gold index, or the gold text for copa-like
    tasks)}]}, lm-eval's per-sample results in the order of its documents."""

    metrics: dict[str, dict[str, float]]
    outcomes: dict[str, list[dict]]


def metric_name(key: str) -> str:
    """lm-eval's "<metric>,<filter>" -> the row's name: the metric, with `:<filter>` unless the
    filter is "none" (a task with several filters keeps each)."""
    metric, _, kind = key.partition(",")
    return metric if kind in ("", "none") else f"{metric}:{kind}"


def _outcome(sample: dict, metrics: set[str]) -> dict:
    """One document's per-sample values of the task's metrics, and its choices' log-likelihoods
    (loglikelihood tasks)."""
    kept = {name: float(sample[name]) for name in sorted(metrics) if isinstance(sample.get(name), (int, float))}
    responses = sample.get("filtered_resps") or []
    scored = all(isinstance(r, (list, tuple)) and isinstance(r[0], (int, float)) for r in responses)
    loglikelihoods = [float(response[0]) for response in responses] if scored else []
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
        metrics[task] = {metric_name(key): float(value) for key, value in values.items()
                         if "," in key and isinstance(value, (int, float)) and not isinstance(value, bool)}
        metrics[task]["documents"] = len(out["samples"][task])
    outcomes = {task: [_outcome(sample, {k.split(":")[0] for k in metrics[task]}) for sample in samples]
                for task, samples in out["samples"].items()}
    return TaskResults(metrics, outcomes)
