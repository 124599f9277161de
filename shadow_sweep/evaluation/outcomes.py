"""One evaluation point's numbers with their errors, and the per-document outcomes behind them.

Row fields (docs/sweeps.md, "Row fields"): per task every metric of its metric_list
`<metric>/<task>` and `<metric>_stderr/<task>` (acc, acc_norm, perplexity, ...), `documents/<task>`;
`acc_mean` (unweighted mean over the tasks that have acc) and `acc_mean_stderr` = sqrt(sum se^2) / K; `token_perplexity_low/high`, the 95% CI
of the token perplexity, `perplexity_ci_unit` (documents or windows) and `perplexity_units`.
The outcomes file (`outcomes.json`, in the point's cache entry and copied into the sweep
folder) holds lm-eval's per-document results and every perplexity window's NLL, so two points
can be compared later on the same documents without a model.
"""

import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from shadow_sweep.evaluation.harness import SCORED, TaskResults
from shadow_sweep.evaluation.perplexity import PerplexityResult
from shadow_sweep.statistics import stderr_of_mean_of_means

OUTCOMES_NAME = "outcomes.json"


def accuracy_fields(results: TaskResults) -> dict:
    """`<metric>/<task>` for every metric of every task; acc_mean over the tasks that have acc."""
    row = {f"{name}/{task}": value for task, metrics in results.metrics.items() for name, value in metrics.items()}
    scored = [m for m in results.metrics.values() if "acc" in m]
    if scored:
        row["acc_mean"] = sum(m["acc"] for m in scored) / len(scored)
        row["acc_mean_stderr"] = stderr_of_mean_of_means([m["acc_stderr"] for m in scored])
    return row


def perplexity_fields(result: PerplexityResult, seed: int) -> dict:
    low, high = result.token_perplexity_ci(seed)
    return {"token_perplexity": result.token_perplexity, "word_perplexity": result.word_perplexity,
            "bits_per_byte": result.bits_per_byte, "perplexity_tokens": result.tokens,
            "token_perplexity_low": low, "token_perplexity_high": high,
            "perplexity_ci_unit": result.resampled_unit, "perplexity_units": len(result.units()[0])}


def outcomes_record(tasks: Optional[TaskResults], perplexity: Optional[PerplexityResult]) -> dict:
    """{"tasks": {task: [per-document outcome]}, "perplexity_windows": [{document, nll, tokens}]}."""
    return {"tasks": tasks.outcomes if tasks else {},
            "perplexity_windows": [asdict(w) for w in perplexity.windows] if perplexity else []}


def write_outcomes(record: dict, folder: Path) -> Path:
    path = Path(folder) / OUTCOMES_NAME
    path.write_text(json.dumps(record))
    return path


def task_outcomes(record: dict, metric: str = "acc") -> dict[str, dict[int, float]]:
    """{task: {document id: outcome}} of one metric, the input of a paired comparison."""
    if metric not in SCORED:
        raise ValueError(f"metric must be one of {SCORED}, got {metric!r}")
    return {task: {o["doc_id"]: o[metric] for o in docs if metric in o} for task, docs in record["tasks"].items()}
