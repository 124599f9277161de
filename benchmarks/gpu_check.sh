#!/usr/bin/env bash
# The sparse decode path on a CUDA device, in one run: the CUDA tests (CUDA == CPU logits),
# then the latency table on the GPU. Run from the repository root after `make .venv`:
#     bash benchmarks/gpu_check.sh [extra Hydra overrides]
set -euo pipefail
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
python=${PYTHON:-.venv/bin/python}
"$python" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name())'
"$python" -m pytest -q tests/decode -k cuda
"$python" benchmarks/decode_latency.py model.device=cuda 'bench.levels=[0.3,0.5,0.7]' bench.repeats=5 "$@"
