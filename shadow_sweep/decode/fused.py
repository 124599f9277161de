"""Gather-GEMV kernels for per-token masks: compute only the kept rows of a weight.

    gather_gemv(W [R, D], rows [k], x [D])              -> W[rows] @ x        [k]
    gather_transposed_gemv(Wt [R, D], rows [k], x [k])  -> x @ Wt[rows]       [D]

On the CPU in float32: the fused C++/OpenMP kernels (kernels/gather_gemv.cpp), compiled on
first use with torch's cpp_extension into the stage cache (about a minute, once per machine
and torch); they read the kept rows in place. On CUDA, and for other dtypes:
`TorchGatherKernels`, the same two functions in torch ops (an on-device gather of the kept
rows, then a GEMV; no host sync).
"""

from functools import lru_cache
from pathlib import Path

import torch
from torch.utils.cpp_extension import load

from shadow_sweep.config import BENCH_KERNELS

SOURCE = Path(__file__).parent / "kernels" / "gather_gemv.cpp"


@lru_cache(maxsize=None)
def cpp_kernels(build_dir: str):
    """The compiled C++ module (gather_gemv, gather_transposed_gemv)."""
    Path(build_dir).mkdir(parents=True, exist_ok=True)
    return load(name="shadow_sweep_gather_gemv", sources=[str(SOURCE)], build_directory=build_dir,
                extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False)


class TorchGatherKernels:
    """The kernels' contract in torch ops, for any device."""

    name = "torch_gather"

    @staticmethod
    def gather_gemv(weight: torch.Tensor, rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return weight.index_select(0, rows) @ x

    @staticmethod
    def gather_transposed_gemv(weight_t: torch.Tensor, rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x @ weight_t.index_select(0, rows)


def build_dir(cache_root: str | Path) -> str:
    return str(Path(cache_root) / "extensions" / f"torch-{torch.__version__}")


def gather_kernels(kernel: str, device: torch.device, dtype: torch.dtype, cache_root: str | Path):
    """`bench.kernel` for weights of this device and dtype: None for eager (the decoder copies
    kept rows every token), the C++ module for float32 on the CPU, TorchGatherKernels else."""
    if kernel not in BENCH_KERNELS:
        raise ValueError(f"bench.kernel must be one of {BENCH_KERNELS}, got {kernel!r}")
    if kernel == "eager":
        return None
    if device.type == "cpu" and dtype == torch.float32:
        return cpp_kernels(build_dir(cache_root))
    return TorchGatherKernels()


def kernel_name(kernels) -> str:
    return "eager" if kernels is None else getattr(kernels, "name", "fused_cpp")
