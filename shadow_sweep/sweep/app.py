"""`shadow-sweep`: the Hydra app.

For now the job loads the configured model, collects the configured criterion's traces on
the calibration examples (cached), and measures WikiText-2 perplexity on the first
evaluation articles, dense and with seeded random masks at `random_masks.level`.
"""

import json
import resource
import time
from pathlib import Path

import hydra
import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from shadow_sweep.cache import StageCache
from shadow_sweep.config import AppConfig, register_configs, validate
from shadow_sweep.data.tasks import EVALUATION, SplitRule
from shadow_sweep.data.wikitext import load_wikitext
from shadow_sweep.evaluation.perplexity import wikitext_perplexity
from shadow_sweep.models.loading import load_model
from shadow_sweep.models.masks import HeadNeuronMasks
from shadow_sweep.sweep.compose import CONF_DIR
from shadow_sweep.sparsity.topk import random_masks
from shadow_sweep.traces.stage import trace_key, traces_for

def peak_memory_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def trace_summary(cfg: AppConfig, loaded, cache: StageCache) -> dict:
    """Collect (or reuse) the traces of the configured criterion and describe them."""
    started = time.perf_counter()
    hit = cache.has("traces", trace_key(cfg))
    traces, folder = traces_for(cfg, loaded, cache)
    size = sum(f.stat().st_size for f in folder.iterdir())
    return {"model": cfg.model.name, "criterion": cfg.criterion.name.value, "examples": len(traces),
            "cache_hit": hit, "seconds": time.perf_counter() - started, "bytes": size,
            "bytes_per_1000_examples": size * 1000 / len(traces), "folder": str(folder)}


def perplexity_rows(cfg: AppConfig, loaded, documents, load_seconds: float) -> list[dict]:
    """WikiText-2 perplexity dense, then with seeded random masks at random_masks.level."""
    ppl = cfg.perplexity
    generator = torch.Generator().manual_seed(cfg.random_masks.seed)
    rows = []
    with HeadNeuronMasks(loaded.model, loaded.adapter, loaded.shape) as masks:

        def set_random(ids: torch.Tensor, _attention: torch.Tensor) -> None:
            masks.set(*random_masks(ids.shape[0], loaded.shape, cfg.random_masks.level, generator))

        for name, level, setter in (("dense", 0.0, None), ("random", cfg.random_masks.level, set_random)):
            started = time.perf_counter()
            result = wikitext_perplexity(loaded, documents, ppl.window, ppl.stride or ppl.window, ppl.batch_size,
                                         setter, progress=True)
            rows.append({"model": cfg.model.name, "masks": name, "sparsity": level,
                         "token_perplexity": result.token_perplexity, "word_perplexity": result.word_perplexity,
                         "bits_per_byte": result.bits_per_byte, "tokens": result.tokens,
                         "documents": len(documents), "eval_seconds": time.perf_counter() - started,
                         "load_seconds": load_seconds, "peak_memory_mib": peak_memory_mib()})
            masks.clear()
    return rows


def run_job(cfg: AppConfig, output_dir: Path) -> pd.DataFrame:
    validate(cfg)
    rule = SplitRule(cfg.data_split.calibration_fraction, cfg.data_split.seed)
    documents = load_wikitext(cfg.paths.data_root, cfg.perplexity.max_documents, part=EVALUATION, rule=rule)
    cache = StageCache(Path(cfg.paths.cache_dir))
    started = time.perf_counter()
    loaded = load_model(cfg.model, cache)
    load_seconds = time.perf_counter() - started
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.stages.trace:
        summary = trace_summary(cfg, loaded, cache)
        (output_dir / "traces.json").write_text(json.dumps(summary, indent=2))
        print(f"traces: {summary['examples']} examples of {summary['criterion']} in {summary['folder']}"
              f" ({summary['bytes'] / 1e6:.1f} MB, cache hit: {summary['cache_hit']})")
    rows = perplexity_rows(cfg, loaded, documents, load_seconds) if cfg.stages.perplexity else []
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
    print(f"results: {output_dir / 'results.jsonl'}")


def main() -> None:
    register_configs()
    _hydra_entry()
