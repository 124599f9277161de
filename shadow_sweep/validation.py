"""Range and consistency checks that types cannot express, run right after composition and
before anything expensive: every message names the field and what it allows."""

from shadow_sweep.criteria.registry import per_token_criteria
from shadow_sweep.config import Allocation, AppConfig, MaskUpdate, ModelSource, require
from shadow_sweep.selectors.base import Need, Point
from shadow_sweep.selectors.registry import (PointSelection, baseline_selections, decode_selectors, job_selection,
                                             selection_of, selector_class)


def check_selection(cfg: AppConfig, selection: PointSelection) -> None:
    """What every selector of a point declares: the update policies and rules it serves, a
    dense layer 0 where it reads it, the per-token traces of its fit; then its own rules."""
    sparsity = cfg.sparsity
    for name in selection.names():
        cls = selector_class(name)
        spec = cls.spec
        require(sparsity.update in spec.updates, "sparsity.update", sparsity.update.value,
                 f"one of {[u.value for u in spec.updates]} with selector {name}")
        if sparsity.rule is not None:
            require(sparsity.rule in spec.rules, "sparsity.rule", sparsity.rule.value,
                     f"null or one of {[r.value for r in spec.rules]} with selector {name}")
        if spec.needs_dense_first_layer:
            require(sparsity.keep_first_layer_dense, "sparsity.keep_first_layer_dense", False,
                     f"true with selector {name} (it predicts layers 1..L-1)")
        own_checkpoint = cfg.predictor.checkpoint and name == cfg.predictor.name
        if Need.traces in cls.needs(cfg) and sparsity.update == MaskUpdate.per_token and not own_checkpoint:
            forms = per_token_criteria()
            require(cfg.criterion.name.value in forms, "criterion.name", cfg.criterion.name.value,
                     f"one with a per-token form ({', '.join(forms)}) with sparsity.update=per_token "
                     f"(selector {name} is fitted on per-token samples), or sparsity.update=per_sequence")
            require(cfg.calibration.positions_per_example != 0, "calibration.positions_per_example", 0,
                     "null (every position) or >= 1 with sparsity.update=per_token")
        cls.check(cfg)


def check_selectors(cfg: AppConfig) -> None:
    """The job's selection, its baselines and the bench's selectors."""
    selections = [job_selection(cfg)] + baseline_selections(cfg)
    for selection in selections:
        check_selection(cfg, selection)
    if cfg.sparsity.allocation == Allocation.greedy:
        at_input = [n for s in selections for n in s.names() if selector_class(n).spec.point == Point.input]
        require(bool(at_input), "sparsity.allocation", "greedy",
                 "uniform, or greedy with a selector at a linear's input (teal, wina)")
        require(cfg.sparsity.head_level is None and cfg.sparsity.neuron_level is None, "sparsity.head_level/neuron_level",
                (cfg.sparsity.head_level, cfg.sparsity.neuron_level),
                "null with sparsity.allocation=greedy (it spreads sparsity.level over a layer's inputs)")
    updates = [MaskUpdate(u) for u in cfg.bench.updates] or [cfg.sparsity.update]
    for name in cfg.bench.predictors:
        require(name in decode_selectors(), "bench.predictors", name,
                 f"selectors the decode path runs: {decode_selectors()}")
        require(bool(selection_of(name).decode_updates(updates)), "bench.predictors", name,
                 f"selectors the decode path runs under bench.updates {[u.value for u in updates]}: "
                 f"{[n for n in decode_selectors() if selection_of(n).decode_updates(updates)]}")


def validate(cfg: AppConfig) -> None:
    """Every check; a failure raises ConfigError naming the field and the allowed values."""
    for level in cfg.sparsity.levels or [cfg.sparsity.level]:
        require(0.0 <= level < 1.0, "sparsity.level(s)", level, "numbers in [0, 1)")
    for name in ("head_level", "neuron_level"):
        value = getattr(cfg.sparsity, name)
        require(value is None or 0.0 <= value < 1.0, f"sparsity.{name}", value, "null or a number in [0, 1)")
    ev = cfg.eval
    require(ev.limit is None or ev.limit >= 1, "eval.limit", ev.limit, "null or an integer >= 1")
    for name in ("batch_size", "max_length"):
        require(getattr(ev, name) >= 1, f"eval.{name}", getattr(ev, name), "an integer >= 1")
    require(ev.num_fewshot >= 0, "eval.num_fewshot", ev.num_fewshot, "an integer >= 0")
    bench = cfg.bench
    for name in ("prompt_length", "new_tokens", "repeats", "threads"):
        require(getattr(bench, name) >= 1, f"bench.{name}", getattr(bench, name), "an integer >= 1")
    require(bench.new_tokens >= 2, "bench.new_tokens", bench.new_tokens, "an integer >= 2")
    for level in bench.levels:
        require(0.0 <= level < 1.0, "bench.levels", level, "numbers in [0, 1)")
    pred = cfg.predictor
    require(0.0 < pred.validation_fraction < 1.0, "predictor.validation_fraction", pred.validation_fraction,
             "a number in (0, 1)")
    for name in ("batch_size", "depth"):
        require(getattr(pred, name) >= 1, f"predictor.{name}", getattr(pred, name), "an integer >= 1")
    require(pred.epochs is None or pred.epochs >= 1, "predictor.epochs", pred.epochs,
             "null (100 over examples, 20 over tokens) or an integer >= 1")
    require(0.0 < pred.bce_keep_fraction < 1.0, "predictor.bce_keep_fraction", pred.bce_keep_fraction,
             "a number in (0, 1)")
    require(pred.width is None or pred.width >= 1, "predictor.width", pred.width, "null (the rule) or >= 1")
    require(pred.bottleneck is None or pred.bottleneck >= 0, "predictor.bottleneck", pred.bottleneck,
             "null (width // 4), 0 (none) or >= 1")
    require(cfg.sparsity.dense_positions >= 0, "sparsity.dense_positions", cfg.sparsity.dense_positions,
             "an integer >= 0")
    ppl = cfg.perplexity
    require(ppl.window >= 2, "perplexity.window", ppl.window, "an integer >= 2")
    require(ppl.stride is None or 1 <= ppl.stride <= ppl.window, "perplexity.stride", ppl.stride, f"null or an integer in [1, window={ppl.window}]")
    require(ppl.batch_size >= 1, "perplexity.batch_size", ppl.batch_size, "an integer >= 1")
    require(ppl.max_documents is None or ppl.max_documents >= 1, "perplexity.max_documents", ppl.max_documents,
             "null (all 50 evaluation articles) or an integer >= 1")
    require(ppl.max_words_per_document is None or ppl.max_words_per_document >= 1,
             "perplexity.max_words_per_document", ppl.max_words_per_document, "null (whole articles) or an integer >= 1")
    cal = cfg.calibration
    require(bool(cal.tasks) or cal.plain_text_examples > 0, "calibration.tasks", cal.tasks,
             "at least one task, or calibration.plain_text_examples > 0")
    for name in ("examples_per_task", "max_length", "batch_size"):
        require(getattr(cal, name) >= 1, f"calibration.{name}", getattr(cal, name), "an integer >= 1")
    require(cal.positions_per_example is None or cal.positions_per_example >= 0,
             "calibration.positions_per_example", cal.positions_per_example, "null (every position) or >= 0")
    require(cal.shots >= 0 and cal.plain_text_examples >= 0, "calibration.shots/plain_text_examples",
             (cal.shots, cal.plain_text_examples), "integers >= 0")
    require(0.0 <= cfg.data_split.calibration_fraction < 1.0, "data_split.calibration_fraction",
             cfg.data_split.calibration_fraction, "a number in [0, 1)")
    crit = cfg.criterion
    require(crit.epsilon > 0, "criterion.epsilon", crit.epsilon, "a number > 0")
    require(crit.min_class_size >= 2, "criterion.min_class_size", crit.min_class_size, "an integer >= 2")
    require(crit.neuron_block is None or crit.neuron_block >= 3, "criterion.neuron_block", crit.neuron_block,
             "null (the model's head dim) or an integer >= 3 dividing the FFN width")
    check_selectors(cfg)
    model = cfg.model
    require(model.source is not None, "model.source", None,
             f"one of {[s.value for s in ModelSource]} (or set model.gguf_path / model.local_path)")
    require(model.name is not None, "model.name", None, "a name (or a path or hub id to derive it from)")
    if model.source == ModelSource.gguf_file:
        require(bool(model.gguf_path), "model.gguf_path", model.gguf_path, "a GGUF file with source=gguf_file")
    if model.source == ModelSource.gguf_package:
        require(bool(model.gguf_package and model.gguf_file), "model.gguf_package/gguf_file",
                 (model.gguf_package, model.gguf_file), "both set for source=gguf_package")
    if model.source == ModelSource.tiny:
        require("model_type" in model.tiny, "model.tiny.model_type", None, "an HF model_type, e.g. llama or opt")
