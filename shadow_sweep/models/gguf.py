"""A GGUF file given by path: checked before any other work, identified by its content.

`inspect_gguf` reads the header with transformers' own GGUF reader (the one its loader uses;
milliseconds, no tensor data read) and refuses, naming the file,
a missing path, a file that is not GGUF or is shorter than its tensor table says (truncated
download), and an architecture outside `GGUF_ARCHITECTURES`: those transformers' GGUF loader
converts and our adapters (`models/adapters.py`) serve.
`gguf_identity` keys the converted copy in the stage cache by content (size and a sha256 of the
first and last `SAMPLED_BYTES`), so a renamed or copied file reuses it and a changed one does not.
"""

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers.integrations.gguf.reader import GgufHeader

from shadow_sweep.config import ConfigError

# GGUF `general.architecture` values both transformers' GGUF loader and our adapters support.
GGUF_ARCHITECTURES = ("gemma3", "llama", "mistral", "qwen2", "qwen3")
SAMPLED_BYTES = 32 * 2**20
# model.dtype=auto for a GGUF: the file's float type (its half type where F32 norms sit beside
# it); a file of quantised blocks (fp16 scales) dequantises to float16.
QUANTISED_DTYPE = torch.float16


class GGUFFileError(ConfigError):
    pass


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


def inspect_gguf(path: str) -> GGUFHeader:
    resolved = resolve_gguf_path(path)
    size = resolved.stat().st_size
    try:
        header = GgufHeader.from_file(str(resolved))
    except (ValueError, KeyError, struct.error) as error:
        raise GGUFFileError(f"model.gguf_path={path!r} is not a complete GGUF file ({size} bytes: {error}); "
                            "a truncated download or another format") from error
    end = header.data_start + max((t.offset + t.nbytes for t in header.tensors), default=0)
    if end > size:
        raise GGUFFileError(f"model.gguf_path={path!r} is truncated: its tensors end at byte {end}, "
                            f"the file has {size}")
    if header.architecture not in GGUF_ARCHITECTURES:
        raise GGUFFileError(f"model.gguf_path={path!r} holds architecture {header.architecture!r}; supported "
                            f"GGUF architectures: {', '.join(GGUF_ARCHITECTURES)}")
    return GGUFHeader(resolved, header.architecture, header.dtype or QUANTISED_DTYPE)


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
