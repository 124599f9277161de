#!/usr/bin/env bash
# The figure the sweeps exist for (docs/decode.md, README "Latency"): every deployable selector per
# token on SmolLM2 at 30/40/50/70% (per_layer ranking, l2_norm traces for the learned ones), its
# quality on the quick tasks and WikiText-2 quick set and its decode latency on the sparse path in
# the same job (bench=quick, 3 repeats: dense and the selection, ratios within the job's run);
# then `shadow-sweep report` draws quality against the measured speed-up over the fastest dense
# path (quality_vs_latency.png). About 1.5 hours on a 2-core CPU with an empty cache; keep the
# machine otherwise quiet (the timings are the point). A killed run resumes where it stopped.
#   bash benchmarks/quality_vs_speed.sh [model]   (default smollm2-135m)
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-smollm2-135m}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline
root=outputs/sweeps/quality_vs_speed_${model%%-*}
.venv/bin/shadow-sweep -m model="$model" criterion=l2_norm sparsity=per_layer logger=none eval.baseline_selectors=[] \
    predictor=teal,wina,cats,shadowllm,dejavu,dejavu_mlp,static,shadowllm_cats \
    'sparsity.levels=[0.3,0.4,0.5,0.7]' stages.bench=true bench=quick bench.repeats=3 hydra.sweep.dir="$root"
.venv/bin/shadow-sweep report "$root" --out "$root/report" | tail -n 60
