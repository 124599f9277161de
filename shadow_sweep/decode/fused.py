"""The fused gather-GEMV kernels (kernels/gather_gemv.cpp), compiled on first use with
torch's cpp_extension into the stage cache (about a minute, once per machine and torch)."""

from functools import lru_cache
from pathlib import Path

import torch
from torch.utils.cpp_extension import load

SOURCE = Path(__file__).parent / "kernels" / "gather_gemv.cpp"


@lru_cache(maxsize=None)
def kernels(build_dir: str):
    """The compiled module (gather_gemv, gather_transposed_gemv)."""
    Path(build_dir).mkdir(parents=True, exist_ok=True)
    return load(name="shadow_sweep_gather_gemv", sources=[str(SOURCE)], build_directory=build_dir,
                extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False)


def build_dir(cache_root: str | Path) -> str:
    return str(Path(cache_root) / "extensions" / f"torch-{torch.__version__}")
