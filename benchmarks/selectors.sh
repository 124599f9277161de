#!/usr/bin/env bash
# The selectors benchmark (docs/selectors.md, "Measured"): every selector per token on the quick
# tasks and the WikiText-2 quick set, per_layer ranking, l2_norm traces for the learned ones;
# TEAL's greedy allocation; predictor budgets; an attention sink; then the tables. Hours on a
# 2-core CPU (each point about a minute on SmolLM2); sweeps resume where a killed run stopped.
#   bash benchmarks/selectors.sh [model]   (default smollm2-135m; gemma3-270m runs the 50% points)
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-smollm2-135m}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline
root=outputs/sweeps/selectors_${model%%-*}  # selectors_smollm2, selectors_gemma3
run() { .venv/bin/shadow-sweep -m model="$model" criterion=l2_norm sparsity=per_layer stages.bench=false \
    logger=none eval.baseline_selectors=[] "$@"; }
all=oracle,teal,wina,cats,shadowllm,dejavu,dejavu_mlp,static,shadowllm_cats
if [ "$model" = smollm2-135m ]; then
    run predictor=$all 'sparsity.levels=[0.3,0.4,0.5,0.7]' hydra.sweep.dir="$root"
    run predictor=teal,wina sparsity.allocation=greedy 'sparsity.levels=[0.3,0.4,0.5,0.7]' \
        hydra.sweep.dir="$root/greedy"
    run predictor=shadowllm predictor.width=512,1024 sparsity.level=0.5 hydra.sweep.dir="$root/budget_shadowllm"
    run predictor=dejavu predictor.width=96 predictor.bottleneck=24 sparsity.level=0.5 \
        hydra.sweep.dir="$root/budget_dejavu_2"
    run predictor=dejavu predictor.width=432 predictor.bottleneck=108 sparsity.level=0.5 \
        hydra.sweep.dir="$root/budget_dejavu_10"
else
    run predictor=$all sparsity.level=0.5 hydra.sweep.dir="$root"
fi
run predictor=$all sparsity.level=0.5 sparsity.dense_positions=1 hydra.sweep.dir="$root/sink"
.venv/bin/python benchmarks/selector_table.py "$root"
.venv/bin/shadow-sweep report "$root" --out "$root/report" | tail -n 60
