"""`shadow-sweep`: the Hydra app.

A job runs load -> trace -> fit -> evaluate (-> bench, with stages.bench=true): it loads the model, collects the configured
criterion's traces on the calibration examples, fits the configured predictor on them
(both cached), reports the predictor's quality and cost, and measures task accuracy
(lm-eval) and WikiText-2 perplexity on the evaluation parts, dense and with the
predictor's masks at every sparsity level.
"""

import json
import resource
import time
from dataclasses import asdict
from pathlib import Path

import hydra
import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from shadow_sweep.cache import StageCache
from shadow_sweep.config import AppConfig, PredictorName, register_configs
from shadow_sweep.validation import validate
from shadow_sweep.criteria.registry import get_criterion
from shadow_sweep.data.tasks import EVALUATION, SplitRule
from shadow_sweep.data.wikitext import load_wikitext
from shadow_sweep.decode.benchmark import run_benchmark
from shadow_sweep.decode.fused import gather_kernels
from shadow_sweep.evaluation.harness import build_tasks, check_tasks, task_accuracy
from shadow_sweep.evaluation.lm import SparseLM
from shadow_sweep.evaluation.perplexity import wikitext_perplexity
from shadow_sweep.models.loading import LoadedModel, load_model
from shadow_sweep.predictors.cost import predictor_cost
from shadow_sweep.predictors.fit import FittedPredictor, predictor_quality
from shadow_sweep.predictors.runtime import ContextualMasks
from shadow_sweep.predictors.stage import predictor_for
from shadow_sweep.sparsity.policy import SparsityPolicy
from shadow_sweep.sparsity.topk import keep_count
from shadow_sweep.sweep.compose import CONF_DIR
from shadow_sweep.traces.stage import trace_key, traces_for
from shadow_sweep.traces.store import TraceSet


def peak_memory_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def levels(cfg: AppConfig) -> list[float]:
    return list(cfg.sparsity.levels) or [cfg.sparsity.level]


def policy_at(cfg: AppConfig, level: float, loaded: LoadedModel) -> SparsityPolicy:
    return SparsityPolicy(type(cfg.sparsity)(**{**asdict(cfg.sparsity), "level": level}), loaded.shape)


def trace_stage(cfg: AppConfig, loaded: LoadedModel, cache: StageCache) -> tuple[TraceSet, dict]:
    started = time.perf_counter()
    hit = cache.has("traces", trace_key(cfg))
    traces, folder = traces_for(cfg, loaded, cache)
    size = sum(f.stat().st_size for f in folder.iterdir())
    return traces, {"criterion": cfg.criterion.name.value, "examples": len(traces), "cache_hit": hit,
                    "seconds": time.perf_counter() - started, "bytes": size,
                    "bytes_per_1000_examples": size * 1000 / len(traces), "folder": str(folder)}


def fit_stage(cfg: AppConfig, loaded: LoadedModel, traces: TraceSet, cache: StageCache) -> tuple[FittedPredictor, dict]:
    started = time.perf_counter()
    fitted, folder = predictor_for(cfg, loaded, traces, cache)
    policy = policy_at(cfg, levels(cfg)[0], loaded)
    quality = predictor_quality(fitted, traces.batch, cfg.predictor, loaded.shape,
                                keep_count(policy.heads.level, loaded.shape.num_heads),
                                keep_count(policy.neurons.level, loaded.shape.num_neurons))
    return fitted, {"predictor": cfg.predictor.name.value, "folder": str(folder), "seconds": time.perf_counter() - started,
                    "quality_at_level": levels(cfg)[0], **fitted.metrics, **quality,
                    **predictor_cost(fitted, loaded)}


def evaluation_rows(cfg: AppConfig, loaded: LoadedModel, fitted: FittedPredictor, documents, cache: StageCache
                    ) -> list[dict]:
    """Dense, then the predictor's masks at every level (model and predictor loaded once):
    task accuracy through lm-eval and WikiText-2 perplexity, one row per point."""
    rule = SplitRule(cfg.data_split.calibration_fraction, cfg.data_split.seed)
    tasks = build_tasks(cfg.eval.tasks, cfg.paths.data_root, rule, cache) if cfg.stages.accuracy else []
    oracle = (get_criterion(cfg.criterion.name.value), cfg.criterion)
    dense = FittedPredictor(PredictorName.dense, fitted.mean_head_scores, fitted.mean_neuron_scores)
    points = [(dense, 0.0)] if cfg.eval.dense_baseline or fitted.kind == PredictorName.dense else []
    points += [(fitted, level) for level in levels(cfg) if fitted.kind != PredictorName.dense]
    rows = []
    for predictor, level in points:
        started = time.perf_counter()
        row = {"stage": "evaluate", "model": cfg.model.name, "criterion": cfg.criterion.name.value, "predictor": predictor.kind.value,
               "sparsity": level, "ranking": cfg.sparsity.ranking.value}
        runtime = ContextualMasks(loaded, predictor, policy_at(cfg, level, loaded), seed=cfg.predictor.seed,
                                  oracle=oracle)
        with runtime:
            if tasks:
                lm = SparseLM(loaded, cfg.eval.batch_size, cfg.eval.max_length, cfg.model.add_bos_token, runtime,
                              cfg.eval.predict_from)
                accuracy = task_accuracy(lm, tasks, cfg.eval)
                row.update({f"{metric}/{task}": value for task, metrics in accuracy.items()
                            for metric, value in metrics.items()})
                row["acc_mean"] = sum(m["acc"] for m in accuracy.values()) / len(accuracy)
            if cfg.stages.perplexity:
                lm = SparseLM(loaded, cfg.perplexity.batch_size, add_bos_token=cfg.model.add_bos_token)
                ppl = wikitext_perplexity(lm, documents, cfg.perplexity.window,
                                          cfg.perplexity.stride or cfg.perplexity.window, progress=True)
                row.update(token_perplexity=ppl.token_perplexity, word_perplexity=ppl.word_perplexity,
                           bits_per_byte=ppl.bits_per_byte, perplexity_tokens=ppl.tokens)
        row.update(eval_seconds=time.perf_counter() - started, peak_memory_mib=peak_memory_mib())
        rows.append(row)
    return rows


def bench_rows(cfg: AppConfig, loaded: LoadedModel, fitted: FittedPredictor) -> list[dict]:
    """Decode latency on the sparse path: HF generate and our dense path, then the job's
    predictor at the job's levels under each `bench.updates` policy."""
    learned = fitted.kind.value in ("shadowllm", "dejavu", "static")
    bench = type(cfg.bench)(**{**asdict(cfg.bench), "levels": levels(cfg),
                               "predictors": [fitted.kind.value] if learned else []})
    compiled = gather_kernels(bench.kernel, loaded.device, cfg.paths.cache_dir)
    policies = {level: policy_at(cfg, level, loaded) for level in bench.levels}
    table = run_benchmark(loaded, {fitted.kind.value: fitted} if learned else {}, policies, bench, compiled)
    table.insert(0, "stage", "bench")
    table.insert(1, "model", cfg.model.name)
    table.insert(2, "criterion", cfg.criterion.name.value)
    return table.to_dict("records")


def run_job(cfg: AppConfig, output_dir: Path) -> pd.DataFrame:
    validate(cfg)
    if cfg.stages.accuracy:
        check_tasks(cfg.eval.tasks, cfg.paths.data_root)
    rule = SplitRule(cfg.data_split.calibration_fraction, cfg.data_split.seed)
    documents = load_wikitext(cfg.paths.data_root, cfg.perplexity.max_documents, part=EVALUATION, rule=rule)
    cache = StageCache(Path(cfg.paths.cache_dir))
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    loaded = load_model(cfg.model, cache)
    summary = {"model": cfg.model.name, "load_seconds": time.perf_counter() - started}
    for level in levels(cfg):  # impossible pools fail here, before anything expensive
        policy_at(cfg, level, loaded)
    fitted = FittedPredictor(PredictorName.dense, torch.zeros(0), torch.zeros(0))
    if cfg.stages.trace:
        traces, summary["traces"] = trace_stage(cfg, loaded, cache)
        print(f"traces: {len(traces)} examples of {cfg.criterion.name.value} ({summary['traces']['bytes'] / 1e6:.1f} MB,"
              f" cache hit: {summary['traces']['cache_hit']})")
        if cfg.stages.fit:
            fitted, summary["predictor"] = fit_stage(cfg, loaded, traces, cache)
            report = summary["predictor"]
            print(f"predictor {report['predictor']}: " + ", ".join(
                f"{k} {report[k]:.3g}" for k in report if k.endswith("_mean") or k.endswith("_percent_of_model")))
    evaluate = cfg.stages.accuracy or cfg.stages.perplexity
    rows = evaluation_rows(cfg, loaded, fitted, documents, cache) if evaluate else []
    if cfg.stages.bench:
        rows += bench_rows(cfg, loaded, fitted)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    with open(output_dir / "results.jsonl", "a") as sink:
        for row in rows:
            sink.write(json.dumps(row) + "\n")
    return pd.DataFrame(rows)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _hydra_entry(cfg: DictConfig) -> None:
    app_cfg: AppConfig = OmegaConf.to_object(cfg)
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    table = run_job(app_cfg, output_dir)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"results: {output_dir / 'results.jsonl'}, summary: {output_dir / 'summary.json'}")


def main() -> None:
    register_configs()
    _hydra_entry()
