"""Kernels of the one-token decode step (`bench.kernel`).

    gather_gemv(W [R, D], rows [k] | None, x [D])             -> W[rows] @ x        [k]
    gather_transposed_gemv(Wt [R, D], rows [k] | None, x [k]) -> x @ Wt[rows]       [D]
    vector_matrix(x [in], W [in, out]), top_k_indices(scores [..., U], k): a predictor for one token
    decode_layers(x [1, D], packs, ...)                       -> (x' [1, D], last context [1, |Q| d])

On the CPU in float32: the C++/OpenMP kernels (kernels/decode_step.cpp), compiled on first
use with torch's cpp_extension into the stage cache (about a minute, once per machine, CPU
feature set and torch); they read the kept rows in place (rows None: every row).
`fused_layer` runs every one-token step (dense, sliced and per-token rows) in C++, the layers
between two predictor calls in one call (all layers for fixed masks; layers 1.. after
ShadowLLM's predictor; one layer per call under DejaVu); `fused` uses the row kernels for
per-token rows only. On CUDA, and for other dtypes: `TorchGatherKernels`, the two row
functions in torch ops (an on-device gather of the kept rows, then a GEMV; no host sync).
"""

import hashlib
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch
from torch.utils.cpp_extension import load

from shadow_sweep.config import BenchKernel
from shadow_sweep.sparsity.topk import top_k_indices

SOURCE = Path(__file__).parent / "kernels" / "decode_step.cpp"


@lru_cache(maxsize=None)
def cpp_kernels(build_dir: str):
    """The compiled C++ module (gather_gemv, gather_transposed_gemv, decode_layers)."""
    Path(build_dir).mkdir(parents=True, exist_ok=True)
    return load(name="shadow_sweep_decode_step", sources=[str(SOURCE)], build_directory=build_dir,
                extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False)


@dataclass(frozen=True)
class CppKernels:
    """The C++ module for one `bench.kernel` mode; `whole_layers`: one-token steps run each
    span of layers as one `decode_layers` call (fused_layer), else only per-token rows use
    the row kernels (fused)."""

    module: object
    whole_layers: bool

    @property
    def name(self) -> str:
        return "fused_layer" if self.whole_layers else "fused_cpp"

    def gather_gemv(self, weight: torch.Tensor, rows: Optional[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return self.module.gather_gemv(weight, rows, x)

    def gather_transposed_gemv(self, weight_t: torch.Tensor, rows: Optional[torch.Tensor], x: torch.Tensor
                               ) -> torch.Tensor:
        return self.module.gather_transposed_gemv(weight_t, rows, x)

    def vector_matrix(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """x [in] @ weight [in, out] -> [out] (a predictor layer for one token)."""
        return self.module.gather_transposed_gemv(weight, None, x)

    def top_k_indices(self, scores: torch.Tensor, keep: int) -> torch.Tensor:
        """Each row's `keep` highest scores [..., U] -> positions [..., keep], ascending (ties at the
        threshold to lower positions; sparsity.topk.top_k_indices leaves them to torch.topk)."""
        rows = scores.reshape(-1, scores.shape[-1]).float()
        return self.module.top_k_rows(rows, keep).view(*scores.shape[:-1], keep)


class TorchGatherKernels:
    """The kernels' contract in torch ops, for any device."""

    name = "torch_gather"

    @staticmethod
    def gather_gemv(weight: torch.Tensor, rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return weight.index_select(0, rows) @ x

    @staticmethod
    def gather_transposed_gemv(weight_t: torch.Tensor, rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x @ weight_t.index_select(0, rows)

    @staticmethod
    def vector_matrix(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x @ weight

    top_k_indices = staticmethod(top_k_indices)


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
    kernel = BenchKernel(kernel)
    if kernel == BenchKernel.eager:
        return None
    if device.type == "cpu" and dtype == torch.float32:
        return CppKernels(cpp_kernels(build_dir(cache_root)), whole_layers=kernel == BenchKernel.fused_layer)
    return TorchGatherKernels()


def kernel_name(kernels) -> str:
    return "eager" if kernels is None else kernels.name
