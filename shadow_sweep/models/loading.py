"""Load a configured model: a GGUF package or file, a hub id / local folder, or tiny random.

GGUF files are dequantised by transformers (slow: ~15 s for SmolLM2-135M), so the first
load converts them once to safetensors in the stage cache; later loads read that. A packaged
GGUF is converted in float32 (keyed by package, file and size); a GGUF file by path in
`model.dtype` (keyed by its content, `models/gguf.py`: renaming or moving it reuses the copy).
"""

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, ByT5Tokenizer, PreTrainedModel,
                          PreTrainedTokenizerBase)

from shadow_sweep.cache import StageCache
from shadow_sweep.config import Device, DType, ModelConfig, ModelSource, UserError
from shadow_sweep.models.adapters import ArchitectureAdapter, ModelShape, adapter_for
from shadow_sweep.models.gguf import gguf_identity, inspect_gguf, resolve_gguf_path


class ModelUnavailableError(UserError, RuntimeError):
    pass


@dataclass
class LoadedModel:
    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    adapter: ArchitectureAdapter
    shape: ModelShape

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def resolve_device(device: Device) -> torch.device:
    if device == Device.auto:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == Device.cuda and not torch.cuda.is_available():
        raise ModelUnavailableError("model.device=cuda but no CUDA device is available; use model.device=cpu or auto")
    return torch.device(device.value)


def check_model_files(cfg: ModelConfig) -> None:
    """Before any other work: the GGUF file is complete and of a supported architecture, the
    local folder exists (errors name the file and what is supported)."""
    if cfg.source == ModelSource.gguf_file:
        inspect_gguf(cfg.gguf_path)
    if cfg.source == ModelSource.hub and cfg.local_path:
        check_model_folder(cfg)


WEIGHTS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
TOKENIZERS = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def check_model_folder(cfg: ModelConfig) -> None:
    """model.local_path holds a model: its config.json, weights and a tokenizer (the error names
    what is missing)."""
    folder = Path(cfg.local_path)
    if not folder.is_dir():
        raise ModelUnavailableError(f"model.local_path={cfg.local_path!r} for model {cfg.name!r} is not a folder")
    missing = [what for what, found in (
        ("config.json", (folder / "config.json").is_file()),
        ("weights (*.safetensors or *.bin)", any(any(folder.glob(pattern)) for pattern in WEIGHTS)),
        (f"a tokenizer ({' or '.join(TOKENIZERS)})", any((folder / name).is_file() for name in TOKENIZERS)))
        if not found]
    if missing:
        raise ModelUnavailableError(f"model.local_path={cfg.local_path!r} is not a complete model folder: it has no "
                                    f"{', no '.join(missing)}")


def requested_dtype(cfg: ModelConfig) -> torch.dtype | None:
    """model.dtype as a torch dtype; None for `auto` (the checkpoint's)."""
    return None if cfg.dtype == DType.auto else getattr(torch, cfg.dtype.value)


def load_model(cfg: ModelConfig, cache: StageCache) -> LoadedModel:
    device = resolve_device(cfg.device)
    dtype = requested_dtype(cfg)
    if cfg.source == ModelSource.tiny:
        model, tokenizer = _build_tiny(cfg)
    else:
        folder = _model_folder(cfg, cache)
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or "auto",
                                                         attn_implementation=cfg.attn_implementation)
        except OSError as error:
            raise ModelUnavailableError(
                f"model {cfg.name!r} could not be loaded from {folder!r} ({error}). Where the hub is unreachable, "
                "point model.local_path at a folder holding its config.json and weights."
            ) from error
    model = model.to(device=device, dtype=dtype).eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    adapter = adapter_for(model.config)
    return LoadedModel(cfg.name, model, tokenizer, adapter, adapter.shape(model.config))


def _build_tiny(cfg: ModelConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Random weights from an architecture config (seeded) with a file-free byte tokenizer."""
    kwargs = dict(cfg.tiny)
    config = AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    tokenizer = ByT5Tokenizer()
    if config.vocab_size < len(tokenizer):
        raise ValueError(f"model.tiny.vocab_size must be at least {len(tokenizer)} (byte tokenizer), got {config.vocab_size}")
    config.pad_token_id, config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    with torch.random.fork_rng():
        torch.manual_seed(cfg.init_seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=cfg.attn_implementation)
    return model, tokenizer


def locate_gguf(cfg: ModelConfig, cache: StageCache) -> Path:
    """The GGUF file of a `gguf_package` model, found without importing a shipping package."""
    spec = importlib.util.find_spec(cfg.gguf_package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            f"model {cfg.name!r} needs the Python package {cfg.gguf_package!r}, which is not installed. "
            f"{cfg.install_hint}".strip()
        )
    shipped = Path(next(iter(spec.submodule_search_locations))) / cfg.gguf_file
    if shipped.is_file():
        return shipped
    if cfg.gguf_assemble:  # chunked packages rebuild the file; importing them is their API
        target = cache.entry("gguf", {"package": cfg.gguf_package, "file": cfg.gguf_file}) / cfg.gguf_file
        return Path(importlib.import_module(cfg.gguf_package).assemble(output_path=target))
    raise ModelUnavailableError(f"{shipped} not found in package {cfg.gguf_package!r}. {cfg.install_hint}".strip())


def _model_folder(cfg: ModelConfig, cache: StageCache) -> Path | str:
    if cfg.source == ModelSource.gguf_package:
        gguf = locate_gguf(cfg, cache)
        fields = {"model": cfg.name, "gguf_file": cfg.gguf_file, "gguf_bytes": gguf.stat().st_size}
        return _converted_gguf(gguf, torch.float32, fields, cache)
    if cfg.source == ModelSource.gguf_file:
        gguf = resolve_gguf_path(cfg.gguf_path)
        dtype = requested_dtype(cfg) or inspect_gguf(cfg.gguf_path).checkpoint_dtype
        fields = {"gguf": gguf_identity(cfg.gguf_path), "dtype": str(dtype)}
        return _converted_gguf(gguf, dtype, fields, cache)
    return _hub_folder(cfg)


def _converted_gguf(gguf: Path, dtype: torch.dtype, fields: dict, cache: StageCache) -> Path:
    """The GGUF file dequantised to `dtype`, saved once as safetensors with its tokenizer."""

    def convert(folder: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
        model.hf_quantizer = None  # weights are dequantised now: save them as plain safetensors
        del model.config.quantization_config
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return cache.get_or_build("model", fields, convert)


def _hub_folder(cfg: ModelConfig) -> str:
    """A local folder, or a hub id that is cached (offline) or downloadable (online)."""
    if cfg.local_path:
        if not Path(cfg.local_path).is_dir():
            raise ModelUnavailableError(f"model.local_path={cfg.local_path!r} for model {cfg.name!r} is not a folder")
        return cfg.local_path
    if not cfg.hub_id:
        raise ModelUnavailableError(f"model {cfg.name!r} has neither model.hub_id nor model.local_path")
    from huggingface_hub import try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(cfg.hub_id, "config.json"), str)
    if not cached and os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        raise ModelUnavailableError(
            f"model {cfg.name!r} ({cfg.hub_id}) is not in the local Hugging Face cache and the hub is offline "
            f"(HF_HUB_OFFLINE is set). Download it where a network exists, or point model.local_path at a folder "
            f"holding its config.json and weights."
        )
    return cfg.hub_id
