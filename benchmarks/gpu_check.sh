#!/usr/bin/env bash
# The sparse decode path on a CUDA device, in one run: the CUDA tests (CUDA == CPU logits,
# CUDA graph replay == eager), then latency tables on the GPU (bfloat16, then float32),
# eager and CUDA-graph rows; the bfloat16 tables also time HF generate with a static cache,
# compiled by transformers (hf_generate_compiled, compile_s apart). From the repository root:
#     PYTHON=python3 bash benchmarks/gpu_check.sh [Hydra overrides for both tables]
# It times `model=smollm2-135m-shape` (SmolLM2-135M's shapes, random weights: latency depends
# on shapes, not values) with small calibration and short predictor fits (their quality does
# not change the time either); override model=smollm2-135m where the GGUF package is installed.
# Last, a 7B-class shape (model=llama2-7b-shape: Llama-2-7B's shapes, random weights, untrained
# predictors of its shapes; 13.5 GB in bfloat16, ~27 GB of host memory to build): dense vs 50%
# ShadowLLM per_sequence and per_token and TEAL per_token (thresholds calibrated on 4 examples a
# task), eager and CUDA-graph rows, each against its HBM floor (x_floor). On CUDA the gate and
# input selections (teal, wina, cats) run as masks on dense products (no GPU gather kernel yet:
# docs/decode.md, "Devices"): their rows show the rules' cost, not a saving.
set -uo pipefail
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline
python=${PYTHON:-.venv/bin/python}
common=(model=smollm2-135m-shape calibration.examples_per_task=4 predictor.epochs=5 model.device=cuda
        'bench.levels=[0.5]')
"$python" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())' || exit 1
"$python" -m pytest -q -p no:cacheprovider tests/decode -k cuda
status=$?
echo "== decode latency, bfloat16"
"$python" benchmarks/decode_latency.py "${common[@]}" model.dtype=bfloat16 'bench.predictors=[shadowllm,dejavu,teal]' \
    "$@" || status=1
echo "== decode latency, float32"
"$python" benchmarks/decode_latency.py "${common[@]}" model.dtype=float32 'bench.predictors=[shadowllm]' \
    'bench.updates=[per_sequence]' bench.hf_compiled=false "$@" || status=1
echo "== decode latency, Llama-2-7B shape, bfloat16"
"$python" benchmarks/decode_latency.py model=llama2-7b-shape model.device=cuda model.dtype=bfloat16 \
    calibration.examples_per_task=4 'bench.levels=[0.5]' 'bench.predictors=[shadowllm,teal]' \
    'bench.updates=[per_sequence,per_token]' "$@" || status=1
exit $status
