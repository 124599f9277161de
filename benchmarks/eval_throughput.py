"""Evaluation throughput: lm-eval loglikelihood requests per second, today's path (each request's
whole context + continuation, logits at every position) against shared contexts with logits at
the scored positions only, on the same model, tasks and documents, the two run in turn
`bench.repeats` times; and the projected time of one `eval=paper` point. Any Hydra override works:

    .venv/bin/python benchmarks/eval_throughput.py eval.limit=200 bench.repeats=2

Selections (per_token at the first sparsity level): dense, and each of `bench.predictors` (empty: shadowllm
(ahead), cats (gate), teal (input)), fitted or calibrated by the pipeline's stages (cached).
Tasks: eval.tasks (default here: the paper's seven). Per task and selection: requests, requests/s
of each path (median, min-max over repeats), the ratio (median of the per-repeat ratios, with
their min-max), the largest |log-likelihood difference| of any request and the documents whose
acc differs. Then per selection the projected seconds of an `eval=paper` point: every evaluation
document of each task at its measured rate, plus the point's WikiText-2 perplexity (timed once).
"""

import statistics as stats
import sys
import time
from pathlib import Path

import pandas as pd

from shadow_sweep.cache import StageCache
from shadow_sweep.config import MaskUpdate
from shadow_sweep.data.tasks import EVALUATION, SplitRule
from shadow_sweep.evaluation.harness import build_tasks, task_accuracy
from shadow_sweep.evaluation.lm import SparseLM
from shadow_sweep.evaluation.perplexity import wikitext_perplexity
from shadow_sweep.data.wikitext import load_wikitext
from shadow_sweep.models.loading import load_model
from shadow_sweep.selectors.base import Need
from shadow_sweep.selectors.registry import selection_of, selector_class
from shadow_sweep.sweep.compose import compose_config
from shadow_sweep.sweep.points import EvaluationPoint, levels, point_runtime
from shadow_sweep.sweep.stages import fit_stage, statistics_stage, trace_stage
from shadow_sweep.validation import validate

PAPER_TASKS = ["piqa", "copa", "openbookqa", "winogrande", "rte", "hellaswag", "arc_easy"]
DEFAULT_SELECTORS = ["shadowllm", "cats", "teal"]
PATHS = {"today": {"share_contexts": False, "scored_logits": False},
         "shared": {"share_contexts": True, "scored_logits": True}}


def runtimes(cfg, loaded, cache) -> dict:
    """Selection name -> its runtime (None: dense) at the first sparsity level, per_token."""
    names = list(cfg.bench.predictors) or DEFAULT_SELECTORS
    needs = {name: selector_class(name).needs(cfg) for name in names}
    statistics = None
    if any(Need.statistics in n for n in needs.values()):
        statistics, _ = statistics_stage(cfg, loaded, cache)
    traces = None
    if any(Need.traces in n for n in needs.values()):
        traces, _ = trace_stage(cfg, loaded, cache)
    chosen = {"dense": None}
    for name in names:
        fitted = {name: fit_stage(cfg, loaded, traces, cache, name)[0]} if Need.traces in needs[name] else {}
        point = EvaluationPoint(selection_of(name), levels(cfg)[0], fitted)
        chosen[name] = point_runtime(cfg, loaded, point, statistics, MaskUpdate.per_token)
    return chosen


def timed_task(loaded, runtime, task, cfg, path: str):
    """(seconds, requests, per-document outcomes) of one task through lm-eval on one path."""
    lm = SparseLM(loaded, cfg.eval.batch_size, cfg.eval.max_length, cfg.model.add_bos_token, runtime,
                  cfg.sparsity.prefill, **PATHS[path])
    started = time.perf_counter()
    results = task_accuracy(lm, [task], cfg.eval)
    seconds = time.perf_counter() - started
    outcomes = results.outcomes[task.config.task]
    return seconds, sum(len(o["loglikelihoods"]) for o in outcomes), outcomes


def compare(today: list[dict], shared: list[dict]) -> tuple[float, int]:
    """(largest |log-likelihood difference| over every request, documents whose acc differs)."""
    largest = 0.0
    flips = 0
    for a, b in zip(today, shared, strict=True):
        largest = max([largest] + [abs(x - y) for x, y in zip(a["loglikelihoods"], b["loglikelihoods"], strict=True)])
        flips += int(a.get("acc") != b.get("acc"))
    return largest, flips


def measure(cfg, loaded, tasks, name, runtime) -> list[dict]:
    rows = []
    for task in tasks:
        seconds = {path: [] for path in PATHS}
        outcomes = {}
        for _ in range(cfg.bench.repeats):
            for path in PATHS:
                elapsed, requests, outcomes[path] = timed_task(loaded, runtime, task, cfg, path)
                seconds[path].append(elapsed)
        largest, flips = compare(outcomes["today"], outcomes["shared"])
        rate = {path: [requests / s for s in seconds[path]] for path in PATHS}
        ratios = [t / s for t, s in zip(seconds["today"], seconds["shared"])]
        rows.append({"selection": name, "task": task.config.task, "requests": requests,
                     "today_req_s": stats.median(rate["today"]), "today_min": min(rate["today"]),
                     "today_max": max(rate["today"]), "shared_req_s": stats.median(rate["shared"]),
                     "shared_min": min(rate["shared"]), "shared_max": max(rate["shared"]),
                     "speedup": stats.median(ratios), "speedup_min": min(ratios), "speedup_max": max(ratios),
                     "max_abs_ll_diff": largest, "acc_flips": flips})
        print(pd.DataFrame(rows[-1:]).to_string(index=False, float_format="%.3g"), flush=True)
    return rows


def paper_requests(rule: SplitRule, cfg, cache: StageCache) -> dict[str, int]:
    """Requests of one eval=paper point per task: every evaluation document times its choices."""
    tasks = build_tasks(PAPER_TASKS, cfg.paths.data_root, rule, cache)
    return {task.config.task: sum(len(task.doc_to_choice(doc)) for doc in task.test_docs()) for task in tasks}


def main(overrides: list[str]) -> None:
    cfg = compose_config([f"eval.tasks=[{','.join(PAPER_TASKS)}]", "eval.limit=200"] + overrides)
    validate(cfg)
    cache = StageCache(Path(cfg.paths.cache_dir))
    rule = SplitRule(cfg.data_split.calibration_fraction, cfg.data_split.seed)
    loaded = load_model(cfg.model, cache)
    tasks = build_tasks(list(cfg.eval.tasks), cfg.paths.data_root, rule, cache, cfg.eval.include_path)
    rows = []
    for name, runtime in runtimes(cfg, loaded, cache).items():
        if runtime is None:
            rows += measure(cfg, loaded, tasks, name, None)
            continue
        with runtime:
            rows += measure(cfg, loaded, tasks, name, runtime)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format="%.3g"))
    documents = load_wikitext(cfg.paths.data_root, cfg.perplexity.max_documents, part=EVALUATION, rule=rule,
                              max_words=cfg.perplexity.max_words_per_document)
    started = time.perf_counter()
    wikitext_perplexity(SparseLM(loaded, cfg.perplexity.batch_size), documents, cfg.perplexity.window,
                        cfg.perplexity.window)
    perplexity_seconds = time.perf_counter() - started
    counts = paper_requests(rule, cfg, cache)
    projected = []
    for name, part in table.groupby("selection", sort=False):
        rate = dict(zip(part.task, zip(part.today_req_s, part.shared_req_s)))
        measured = [task for task in counts if task in rate]
        today = sum(counts[t] / rate[t][0] for t in measured) + perplexity_seconds
        shared = sum(counts[t] / rate[t][1] for t in measured) + perplexity_seconds
        projected.append({"selection": name, "tasks": len(measured), "paper_requests": sum(counts[t] for t in measured),
                          "today_min": today / 60, "shared_min": shared / 60, "ratio": today / shared})
    print(f"\nProjected eval=paper point (perplexity as configured, dense: {perplexity_seconds:.0f} s):")
    print(pd.DataFrame(projected).to_string(index=False, float_format="%.3g"))
    out = Path(cfg.paths.cache_dir).parent / "bench"
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "eval_throughput.csv", index=False)
    pd.DataFrame(projected).to_csv(out / "eval_throughput_paper_point.csv", index=False)
    print(f"\ntables: {out}/eval_throughput.csv, {out}/eval_throughput_paper_point.csv")


if __name__ == "__main__":
    main(sys.argv[1:])
