"""Trace collection throughput and peak memory: batch 1 vs batch 8 on the same examples.

Each (criterion, batch size) runs in its own process so that its peak resident memory is
its own. Prints a table with examples/s and the speed-up of batch 8 over batch 1 measured
in the same run. Usage (from the repository root):

    .venv/bin/python benchmarks/trace_throughput.py --examples 32 --criteria plainact l2_norm
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd


def forward_tokens_per_second(model, batch: int, tokens: int = 128, seconds: float = 3.0) -> float:
    """The bare model's no-grad forward throughput at this batch size: the ceiling on what
    batching can buy on this machine."""
    import torch

    ids = torch.randint(3, model.config.vocab_size, (batch, tokens))
    with torch.no_grad():
        model(input_ids=ids, logits_to_keep=1)
        started, runs = time.perf_counter(), 0
        while time.perf_counter() - started < seconds:
            model(input_ids=ids, logits_to_keep=1)
            runs += 1
    return batch * tokens * runs / (time.perf_counter() - started)


def measure(args: argparse.Namespace) -> dict:
    import torch

    from shadow_sweep.cache import StageCache
    from shadow_sweep.criteria.registry import get_criterion
    from shadow_sweep.models.loading import load_model
    from shadow_sweep.sweep.compose import compose_config
    from shadow_sweep.traces.collect import collect
    from shadow_sweep.traces.stage import calibration_set

    torch.set_num_threads(args.threads)
    per_task = max(1, args.examples // 7)
    cfg = compose_config([f"model={args.model}", f"criterion={args.criterion}",
                          f"calibration.examples_per_task={per_task}", f"calibration.max_length={args.max_length}"])
    cache = StageCache(Path(cfg.paths.cache_dir))
    loaded = load_model(cfg.model, cache)
    examples, encoded = calibration_set(cfg, loaded, cache)
    examples, encoded = examples[:args.examples], encoded[:args.examples]
    criterion = get_criterion(args.criterion)
    collect(loaded, criterion, cfg.criterion, encoded[:args.batch], examples[:args.batch], args.batch, False)  # warm-up
    started = time.perf_counter()
    collect(loaded, criterion, cfg.criterion, encoded, examples, args.batch, progress=False)
    seconds = time.perf_counter() - started
    tokens = sum(len(e.input_ids) for e in encoded)
    lengths = sorted(len(e.input_ids) for e in encoded)  # collect() batches by sorted length
    padded = sum(len(lengths[i:i + args.batch]) * lengths[i:i + args.batch][-1] for i in range(0, len(lengths), args.batch))
    return {"criterion": args.criterion, "batch": args.batch, "examples": len(encoded), "tokens": tokens,
            "padded_tokens": padded, "forward_tok_s": forward_tokens_per_second(loaded.model, args.batch),
            "seconds": seconds, "examples_per_s": len(encoded) / seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--criteria", nargs="+", default=["plainact", "l2_norm"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--criterion", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.criterion:  # child process: one measurement, printed as JSON
        print(json.dumps(measure(args)))
        return
    rows = []
    for criterion in args.criteria:
        for batch in args.batches:
            command = [sys.executable, __file__, "--model", args.model, "--examples", str(args.examples),
                       "--max-length", str(args.max_length), "--threads", str(args.threads),
                       "--criterion", criterion, "--batch", str(batch)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    table = pd.DataFrame(rows)
    baseline = table[table.batch == args.batches[0]].set_index("criterion").examples_per_s
    table["speedup_vs_batch_%d" % args.batches[0]] = table.examples_per_s / table.criterion.map(baseline)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
