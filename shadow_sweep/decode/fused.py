"""Gather-GEMV kernels for per-token masks: compute only the kept rows of a weight.

    gather_gemv(W [R, D], rows [k], x [D])              -> W[rows] @ x        [k]
    gather_transposed_gemv(Wt [R, D], rows [k], x [k])  -> x @ Wt[rows]       [D]

On the CPU in float32: the fused C++/OpenMP kernels (kernels/gather_gemv.cpp), compiled on
first use with torch's cpp_extension into the stage cache (about a minute, once per machine
and torch); they read the kept rows in place. On CUDA, and for other dtypes:
`TorchGatherKernels`, the same two functions in torch ops (an on-device gather of the kept
rows, then a GEMV; no host sync).
"""

import hashlib
import platform
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch
from torch.utils.cpp_extension import load

from shadow_sweep.config import BenchKernel

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


def cpu_features() -> str:
    """A short hash of this host's CPU feature flags (what `-march=native` compiles for)."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    flags = next((line.split(":", 1)[1] for line in lines if line.startswith(("flags", "Features"))),
                 f"{platform.machine()} {platform.processor()}")
    return hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()[:12]


def build_dir(cache_root: str | Path, features: Optional[str] = None) -> str:
    """One build per torch version and CPU feature set: a cache shared by the nodes of a
    cluster never hands a node a kernel compiled for instructions it lacks."""
    cpu = features or cpu_features()
    return str(Path(cache_root) / "extensions" / f"torch-{torch.__version__}" / f"cpu-{cpu}")


def gather_kernels(kernel: BenchKernel | str, device: torch.device, dtype: torch.dtype,
                   cache_root: str | Path):
    """`bench.kernel` for weights of this device and dtype: None for eager (the decoder copies
    kept rows every token), the C++ module for float32 on the CPU, TorchGatherKernels else."""
    if BenchKernel(kernel) == BenchKernel.eager:
        return None
    if device.type == "cpu" and dtype == torch.float32:
        return cpp_kernels(build_dir(cache_root))
    return TorchGatherKernels()


def kernel_name(kernels) -> str:
    return "eager" if kernels is None else getattr(kernels, "name", "fused_cpp")
