"""A GGUF file given by path: checked before any other work, identified by its content.

`inspect_gguf` reads the header and the tensor table with the `gguf` package's reader (the one
transformers' GGUF loader reads files with; milliseconds, no tensor data read) and refuses,
naming the file, a missing path, a file that is not GGUF (its magic, version or metadata),
a file shorter than its tensor table says (truncated), a tensor type the `gguf` package does
not know, and an architecture outside `GGUF_ARCHITECTURES`: those transformers' GGUF loader
converts and our adapters (`models/adapters.py`) serve. Every quantisation type the package
knows passes (Q4_K_M files hold Q5_0 and Q6_K tensors): the loader dequantises them.
`gguf_identity` keys the converted copy in the stage cache by content (size and a sha256 of the
first and last `SAMPLED_BYTES`), so a renamed or copied file reuses it and a changed one does not.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader

from shadow_sweep.config import ConfigError

# GGUF `general.architecture` values both transformers' GGUF loader and our adapters support.
GGUF_ARCHITECTURES = ("gemma3", "llama", "mistral", "qwen2", "qwen3")
SAMPLED_BYTES = 32 * 2**20
# model.dtype=auto for a GGUF: the file's float type (its half type where F32 norms sit beside
# it); a file of quantised blocks (fp16 scales) dequantises to float16.
QUANTISED_DTYPE = torch.float16
FLOAT_TYPES = {GGMLQuantizationType.F32: torch.float32, GGMLQuantizationType.F16: torch.float16,
               GGMLQuantizationType.BF16: torch.bfloat16}


class GGUFFileError(ConfigError):
    pass


@dataclass(frozen=True)
class TensorEntry:
    name: str
    kind: GGMLQuantizationType
    data_offset: int
    n_bytes: int


class TensorTable(GGUFReader):
    """The header and tensor table of a GGUF file, without a view of any tensor's data (so a
    truncated file still gives its table: `GGUFReader._build_tensors` would fail reshaping)."""

    def _build_tensors(self, start_offs: int, fields) -> None:
        self.entries = []
        for field in fields:
            _name_length, name, _dims_count, dims, kind, offset = field.parts
            try:
                ggml_type = GGMLQuantizationType(int(kind[0]))
            except ValueError as error:
                raise ValueError(f"tensor {bytes(name).decode()!r} has ggml type {int(kind[0])}, unknown to the "
                                 "gguf package") from error
            block, block_bytes = GGML_QUANT_SIZES[ggml_type]
            self.entries.append(TensorEntry(bytes(name).decode(), ggml_type, int(start_offs + offset[0]),
                                            int(np.prod(dims)) * block_bytes // block))
        self.tensors = []

    def text(self, key: str) -> str:
        field = self.fields[key]
        return bytes(field.parts[field.data[0]]).decode()


@dataclass(frozen=True)
class GGUFHeader:
    path: Path
    architecture: str
    checkpoint_dtype: torch.dtype  # what model.dtype=auto converts to


def resolve_gguf_path(path: str) -> Path:
    """`model.gguf_path`, relative paths against the working directory."""
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise GGUFFileError(f"model.gguf_path={path!r}: no such file ({resolved})")
    return resolved


def checkpoint_dtype(kinds: set[GGMLQuantizationType]) -> torch.dtype:
    """The file's float type (its half type beside F32 norms), or float16 for quantised blocks."""
    if not kinds <= set(FLOAT_TYPES):
        return QUANTISED_DTYPE
    halves = [FLOAT_TYPES[kind] for kind in kinds if kind != GGMLQuantizationType.F32]
    return halves[0] if len(halves) == 1 else torch.float32 if not halves else QUANTISED_DTYPE


def inspect_gguf(path: str) -> GGUFHeader:
    resolved = resolve_gguf_path(path)
    size = resolved.stat().st_size
    try:
        table = TensorTable(str(resolved))
        architecture = table.text("general.architecture")
    except (ValueError, KeyError, IndexError, OverflowError) as error:
        with open(resolved, "rb") as source:
            magic = source.read(4)
        if magic != b"GGUF":
            raise GGUFFileError(f"model.gguf_path={path!r} is not a GGUF file (it does not start with GGUF's "
                                "magic bytes)") from error
        if isinstance(error, IndexError):  # a read past the end of the header
            raise GGUFFileError(f"model.gguf_path={path!r} is truncated: the file ({size} bytes) ends inside its "
                                "header") from error
        raise GGUFFileError(f"model.gguf_path={path!r} cannot be read as GGUF ({size} bytes): {error}") from error
    end = max((entry.data_offset + entry.n_bytes for entry in table.entries), default=0)
    if end > size:
        raise GGUFFileError(f"model.gguf_path={path!r} is truncated: its tensors end at byte {end}, "
                            f"the file has {size}")
    if architecture not in GGUF_ARCHITECTURES:
        raise GGUFFileError(f"model.gguf_path={path!r} holds architecture {architecture!r}; supported "
                            f"GGUF architectures: {', '.join(GGUF_ARCHITECTURES)}")
    return GGUFHeader(resolved, architecture, checkpoint_dtype({entry.kind for entry in table.entries}))


def gguf_identity(path: str) -> dict:
    """{bytes, sha256 of the first and last SAMPLED_BYTES}: the key of the file's content."""
    resolved = resolve_gguf_path(path)
    size = resolved.stat().st_size
    digest = hashlib.sha256()
    with open(resolved, "rb") as source:
        digest.update(source.read(SAMPLED_BYTES))
        source.seek(max(0, size - SAMPLED_BYTES))
        digest.update(source.read(SAMPLED_BYTES))
    return {"bytes": size, "sampled_sha256": digest.hexdigest()}
