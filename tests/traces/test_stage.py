"""The trace stage: cache hits without forwards, storage, non-finite scores named."""

import pytest
import torch

from shadow_sweep.cache import StageCache
from shadow_sweep.config import CriterionConfig
from shadow_sweep.criteria.registry import Criterion, get_criterion
from shadow_sweep.data.calibration import CalibrationExample, EncodedExample
from shadow_sweep.traces.collect import NonFiniteScoreError, collect
from shadow_sweep.traces.stage import traces_for
from tests.conftest import compose_app, load_tiny

SMALL = ["model=tiny-llama", "calibration.examples_per_task=2", "calibration.tasks=[copa,arc_easy]",
         "calibration.plain_text_examples=2", "calibration.max_length=96", "calibration.batch_size=3"]


def _count_forwards(loaded):
    calls = []
    handle = loaded.model.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


def test_traces_are_cached_and_a_hit_runs_no_forward(tmp_path, data_root):
    cfg = compose_app(SMALL + [f"paths.data_root={data_root}", f"paths.cache_dir={tmp_path}"])
    cache = StageCache(tmp_path)
    loaded = load_tiny("tiny-llama", cache)
    calls, handle = _count_forwards(loaded)
    first, folder = traces_for(cfg, loaded, cache, progress=False)
    forwards = len(calls)
    assert forwards == 2  # 6 examples in batches of 3
    again, again_folder = traces_for(cfg, loaded, cache, progress=False)
    handle.remove()
    assert len(calls) == forwards and again_folder == folder
    for field in ("shadow_input", "dejavu_input", "head_scores", "neuron_scores"):
        assert torch.equal(getattr(first.batch, field), getattr(again.batch, field))
    assert [e.source for e in first.examples] == ["copa", "copa", "arc_easy", "arc_easy", "wikitext", "wikitext"]
    manifest = (folder / "manifest.json").read_text()
    assert "plainact" in manifest and "transformers" in manifest


def test_batch_size_shares_the_cache_entry_but_the_criterion_does_not(tmp_path, data_root):
    cache = StageCache(tmp_path)
    loaded = load_tiny("tiny-llama", cache)
    base = SMALL + [f"paths.data_root={data_root}", f"paths.cache_dir={tmp_path}"]
    _, folder = traces_for(compose_app(base), loaded, cache, progress=False)
    _, same = traces_for(compose_app(base + ["calibration.batch_size=5"]), loaded, cache, progress=False)
    _, other = traces_for(compose_app(base + ["criterion=l2_norm"]), loaded, cache, progress=False)
    assert same == folder != other


def test_stored_scores_keep_every_ranking(tmp_path, data_root):
    """fp16 storage after per-example scaling: relative error <= 2^-11 plus, for values far
    under the example's maximum, an absolute error under 1e-7 of that maximum."""
    cfg = compose_app(SMALL + [f"paths.data_root={data_root}", f"paths.cache_dir={tmp_path}", "criterion=fisher"])
    cache = StageCache(tmp_path)
    loaded = load_tiny("tiny-llama", cache)
    traces, folder = traces_for(cfg, loaded, cache, progress=False)
    exact, _ = collect(loaded, get_criterion("fisher"), cfg.criterion, *_encoded(cfg, loaded, cache), batch_size=4,
                    progress=False)
    for field in ("head_scores", "neuron_scores"):
        stored, truth = getattr(traces.batch, field), getattr(exact, field)
        peak = torch.maximum(exact.head_scores.flatten(1).amax(1), exact.neuron_scores.flatten(1).amax(1))
        assert ((stored - truth).abs() <= truth.abs() * 2.0 ** -11 + 1e-7 * peak[:, None, None]).all()
    n, s = len(traces), loaded.shape
    positions = len(traces.tokens.example)  # per-token samples: fp16 like the rest, fp32 scale, int32 indices
    assert positions > n
    per_row = 2 * (s.num_heads * s.head_dim + s.num_layers * (2 * s.hidden_size + s.num_heads + s.num_neurons))  # + MLP inputs
    expected_bytes = per_row * (n + positions) + 4 * n + 12 * positions
    assert expected_bytes < (folder / "traces.safetensors").stat().st_size < expected_bytes + 4096


def _encoded(cfg, loaded, cache):
    from shadow_sweep.traces.stage import calibration_set

    examples, encoded = calibration_set(cfg, loaded, cache)
    return encoded, examples


def test_a_non_finite_score_names_criterion_layer_and_example(session_cache):
    loaded = load_tiny("tiny-opt", session_cache)
    bad = Criterion("plainact", True, False,
                    lambda x, cfg: torch.full(x.a.shape[:1] + x.a.shape[2:3], float("nan")))
    encoded = [EncodedExample(list(range(5, 15)), 6)]
    labels = [CalibrationExample("piqa", 17, "ctx", "answer")]
    with pytest.raises(NonFiniteScoreError, match=r"'plainact'.*heads at layer 0.*piqa#17"):
        collect(loaded, bad, CriterionConfig(), encoded, labels, batch_size=1, progress=False)
