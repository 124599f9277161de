"""`shadow-sweep`: the Hydra app.

For now the job loads the configured model and measures WikiText-2 perplexity on a
slice of the offline data, dense and with seeded random masks at `random_masks.level`.
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
from shadow_sweep.data.wikitext import load_wikitext
from shadow_sweep.evaluation.perplexity import wikitext_perplexity
from shadow_sweep.models.loading import load_model
from shadow_sweep.models.masks import HeadNeuronMasks
from shadow_sweep.sweep.compose import CONF_DIR
from shadow_sweep.sparsity.topk import random_masks

def peak_memory_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_job(cfg: AppConfig, output_dir: Path) -> pd.DataFrame:
    validate(cfg)
    documents = load_wikitext(cfg.paths.data_root, cfg.perplexity.max_documents)
    started = time.perf_counter()
    loaded = load_model(cfg.model, StageCache(Path(cfg.paths.cache_dir)))
    load_seconds = time.perf_counter() - started
    ppl = cfg.perplexity
    generator = torch.Generator().manual_seed(cfg.random_masks.seed)
    rows = []
    with HeadNeuronMasks(loaded.model, loaded.adapter, loaded.shape) as masks:

        def set_random(ids: torch.Tensor, _attention: torch.Tensor) -> None:
            masks.set(*random_masks(ids.shape[0], loaded.shape, cfg.random_masks.level, generator))

        for name, level, setter in (("dense", 0.0, None), ("random", cfg.random_masks.level, set_random)):
            started = time.perf_counter()
            result = wikitext_perplexity(loaded, documents, ppl.window, ppl.stride or ppl.window, ppl.batch_size, setter,
                                         progress=True)
            rows.append({"model": cfg.model.name, "masks": name, "sparsity": level,
                         "token_perplexity": result.token_perplexity, "word_perplexity": result.word_perplexity,
                         "bits_per_byte": result.bits_per_byte, "tokens": result.tokens,
                         "documents": len(documents), "eval_seconds": time.perf_counter() - started,
                         "load_seconds": load_seconds, "peak_memory_mib": peak_memory_mib()})
            masks.clear()
    table = pd.DataFrame(rows)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "results.jsonl", "a") as sink:
        for row in rows:
            sink.write(json.dumps(row) + "\n")
    return table


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
